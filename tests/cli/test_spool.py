"""A run's items and groups on disk (cli/spool.py) and summary.json written from them, streamed.

Oracles: the spooled run writes the same summary.json content as an in-memory one; and the
peak RSS of recording and writing N and 4N synthetic results (realistic items and groups:
top-5 predictions, geometry, files) stays flat with the spool, while the in-memory record grows
with N (the control, which shows the measurement can see the difference).
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

from gradtap.cli.batch import Run
from gradtap.cli.outputs import merge_summary
from gradtap.cli.spool import Spool

MiB = 1 << 20


def result(k: int) -> tuple[str, dict, dict]:
    """One image's group and item, shaped like explain's (about 1.5 KB of JSON)."""
    stem = f"img{k:06d}"
    preds = [{"class": c, "label": f"label {c} " * 3, "prob": 0.1 * c} for c in range(5)]
    geometry = {"original_size": [480, 640], "crop": [0, 80, 480, 560], "scale": 0.4667,
                "input_size": [224, 224], "resample": "area", "note": "x" * 200}  # fmt: skip
    group = {"source": f"/data/photos/{stem}.jpg", "input": f"{stem}/input.png",
             "size": [480, 640], "geometry": geometry, "predictions": preds}  # fmt: skip
    item = {"key": f"{stem}/gradcam.png", "group": stem, "kind": "explain", "method": "gradcam",
            "target": 3, "target_label": "label 3", "target_prob": 0.3, "predicted": 3,
            "files": {"overlay": f"{stem}/gradcam.png", "npy": f"{stem}/gradcam.npy"},
            "caption": ["gradcam", "target label 3 (3) p=0.300"], "seconds": 0.01,
            "map": {"min": 0.0, "max": 1.0, "mean": 0.3, "std": 0.2}}  # fmt: skip
    return stem, group, item


def test_a_spooled_run_writes_what_an_in_memory_one_does(tmp_path: Path) -> None:
    plain, spooled = Run("explain"), Run("explain")
    spool = Spool()
    spooled.items, spooled.groups = spool.items, spool.groups  # type: ignore[assignment]
    for run in (plain, spooled):
        for k in (*range(30), 3):  # image 3 twice: the later item replaces it, in its place
            stem, group, item = result(k)
            run.groups.setdefault(stem, group)
            run.items.append(item)
    assert spooled.items[28:] == plain.items[28:] and len(spooled.items) == 31
    summaries = []
    for name, run in (("plain", plain), ("spooled", spooled)):
        (tmp_path / name).mkdir()
        merge_summary(tmp_path / name, {"command": "x", "items": [result(99)[2]]})  # earlier run
        record = run.record()
        summaries.append(merge_summary(tmp_path / name, record))
    spool.close()
    for s in summaries:
        for r in s["runs"]:
            r.pop("seconds", None), r.pop("started", None)
    assert summaries[0] == summaries[1]
    assert [i["group"] for i in summaries[1]["items"]][:2] == ["img000099", "img000000"]
    assert len(summaries[1]["items"]) == 31 and len(summaries[1]["runs"][1]["items"]) == 31


PROBE = """
import sys
from pathlib import Path
from gradtap.cli.batch import Run
from gradtap.cli.gallery import write_gallery
from gradtap.cli.outputs import merge_summary
from gradtap.cli.spool import Spool
n, mode, out = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
run = Run("explain")
if mode == "spool":
    spool = Spool()
    run.items, run.groups = spool.items, spool.groups
for k in range(n):
    stem, group, item = result(k)
    run.groups.setdefault(stem, group)
    run.items.append(item)
merge_summary(out, run.record(), then=lambda s: write_gallery(out, s), result=False)
# VmHWM: this process's peak RSS (ru_maxrss may carry the forking parent's over the exec)
hwm = next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM"))
print(int(hwm.split()[1]) * 1024)
"""


def _peak(n: int, mode: str, out: Path) -> int:
    out.mkdir()
    script = inspect.getsource(result) + PROBE  # nothing imported beyond what a run needs
    found = subprocess.run([sys.executable, "-c", script, str(n), mode, str(out)], check=True,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    return int(found.stdout.split()[-1])


def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path: Path) -> None:
    n = 2500
    small, large = _peak(n, "spool", tmp_path / "a"), _peak(4 * n, "spool", tmp_path / "b")
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert len(summary["items"]) == 4 * n and len(summary["groups"]) == 4 * n
    gallery = (tmp_path / "b" / "index.html").read_text()
    assert gallery.count("<tr id=") == 1000 and f"of {4 * n} images" in gallery
    # what may differ: SQLite's page cache (2 MiB) and allocator noise; the 3n more results
    # held in memory would be about 3n x 5 KB (the control below measures it)
    assert large - small < 8 * MiB, (small, large)
    held = _peak(4 * n, "memory", tmp_path / "c") - _peak(n, "memory", tmp_path / "d")
    assert held > 3 * (large - small) and held > 16 * MiB, (held, small, large)
