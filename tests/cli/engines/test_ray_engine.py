"""``gradtap explain --engine ray`` on a local Ray instance (2 CPUs, bound to 127.0.0.1).

Oracle: the single-process CLI on the same images: the same maps byte for byte and the same
predictions. A worker killed part way (it exits hard on its second batch, once) must still
yield every image exactly once; a corrupt file must be an error row, never a failed job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gradtap.cli.main import cli
from tests.cli.photoset import photo_folder, tiny_model

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

N = 24
BAD = "img006.png"
METHODS = ("gradcam", "saliency")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("ray")
    photos = root / "photos"
    photo_folder(photos, N)
    (photos / BAD).write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    model = tiny_model(root)
    local = root / "local"
    result = CliRunner().invoke(cli, args(model, photos, local))
    assert result.exit_code == 1, result.output  # the corrupt file fails, the rest is done
    return model, photos, local


def args(model: Path, photos: Path, out: Path, *extra: str) -> list[str]:
    return ["explain", str(photos), "-M", str(model), "-m", ",".join(METHODS), "-b", "3",
            "--format", "npy,overlay", "-o", str(out), *extra]  # fmt: skip


def run_ray(model: Path, photos: Path, out: Path) -> Result:
    return CliRunner().invoke(cli, args(model, photos, out, "--engine", "ray", "--workers", "2"))


def maps(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.npy"))}


def check_results(out: Path, local: Path, result: Result) -> list[dict]:
    assert result.exit_code == 1, result.output
    rows = pq.read_table(out / "results.parquet").to_pylist()
    good = [r for r in rows if r["error"] is None]
    bad = [r for r in rows if r["error"] is not None]
    # every good image exactly once per method; the corrupt one is one error row
    assert sorted((r["stem"], r["method"]) for r in good) == sorted(
        (f"img{k:03d}", m) for k in range(N) if k != 6 for m in METHODS
    )
    assert [r["image"].endswith(BAD) for r in bad] == [True] and BAD in bad[0]["error"]
    assert maps(out) == maps(local) and len(maps(out)) == (N - 1) * len(METHODS)
    summary = json.loads((local / "summary.json").read_text())
    for r in good:  # predictions and targets as the single-process CLI found them
        group = summary["groups"][r["stem"]]
        assert r["top_classes"] == [p["class"] for p in group["predictions"]]
        assert r["top_probs"] == [p["prob"] for p in group["predictions"]]
        item = next(
            i for i in summary["items"] if i["group"] == r["stem"] and i["method"] == r["method"]
        )
        assert (r["target"], r["target_prob"]) == (item["target"], item["target_prob"])
        assert r["map_max"] == item["map"]["max"] and json.loads(r["files"]) == item["files"]
    return rows


def test_ray_equals_the_single_process_cli(
    local_ray: None, job: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    model, photos, local = job
    out = tmp_path / "ray"
    result = run_ray(model, photos, out)
    check_results(out, local, result)
    record = json.loads((out / "summary.json").read_text())["runs"][-1]
    assert record["options"]["ray"]["images_done"] == N - 1
    assert record["options"]["ray"]["images_failed"] == 1
    assert record["options"]["ray"]["batches_retried"] == 0


def test_killed_worker_loses_and_doubles_nothing(
    local_ray: None, job: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, photos, local = job
    marker = tmp_path / "killed-once"
    monkeypatch.setenv("GRADTAP_RAY_FAULT", f"2:{marker}")
    out = tmp_path / "ray"
    result = run_ray(model, photos, out)
    assert marker.exists(), "no worker was killed"
    check_results(out, local, result)
    record = json.loads((out / "summary.json").read_text())["runs"][-1]
    assert record["options"]["ray"]["batches_retried"] >= 1
    assert len(record["items"]) == (N - 1) * len(METHODS)  # no result recorded twice
