"""End-to-end throughput: a folder of real photos explained and written, per tool.

``python bench/e2e.py [--sizes 20,200] [--repeat 3] [--smoke]`` (``make bench-e2e``).

Every side is a fresh process with ``--threads`` compute threads (default 1, as ``make bench``:
onnxruntime's intra-op pool, ``torch.set_num_threads``), timed from start to exit (imports, model load, decoding,
preprocessing, the maps, the pictures, the files) with its peak RSS from ``wait4``:

- ``gradtap``: ``gradtap explain FOLDER -m ... --format F`` (the pipelined batch path: its
  reader and writer threads run beside the compute thread);
- ``gradtap --serial``: the same, stages one after another;
- ``pytorch-grad-cam`` and ``captum``: the scripts their users write (``bench/e2e_scripts.py``).

Workloads: Grad-CAM alone (every side), and Grad-CAM + guided backprop + saliency (gradtap and
captum), each with overlay pictures and with ``--format npy`` (raw maps only: compute without
presentation). The photos are scikit-image's sample photos, cropped and resized into distinct
variants of 256-640 pixels, made once into the ignored ``.cache/bench-e2e/``. The medians of
``--repeat`` runs are printed as a Markdown table with images/s and gradtap's speed-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-e2e"
SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
           "colorwheel", "coins", "camera", "horse")  # fmt: skip
WORKLOADS = {"gradcam": ("gradcam",), "three": ("gradcam", "guided_backprop", "saliency")}
SIDES = {
    "gradcam": ("gradtap", "gradtap --serial", "pytorch-grad-cam", "captum"),
    "three": ("gradtap", "gradtap --serial", "captum"),
}


def photos(n: int, *, small: bool = False) -> Path:
    """A folder of ``n`` distinct real photos (made once; ``small``: 64-96 pixels)."""
    import cv2
    import numpy as np
    from skimage import data, img_as_ubyte

    folder = CACHE / f"photos-{n}{'-small' if small else ''}"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    for k in range(n):
        rgb = img_as_ubyte(getattr(data, SAMPLES[k % len(SAMPLES)])())
        rgb = np.stack([rgb] * 3, -1) if rgb.ndim == 2 else rgb[..., :3]
        h, w = rgb.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1)), int(w * rng.uniform(0.5, 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        side = int(rng.integers(64, 97) if small else rng.integers(256, 641))
        scale = side / max(ch, cw)
        crop = cv2.resize(rgb[y : y + ch, x : x + cw], (round(cw * scale), round(ch * scale)))
        cv2.imwrite(
            str(folder / f"photo{k:04d}.jpg"), crop[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90]
        )
    return folder


def graph(model: str, weights: str) -> Path:
    """The explanation graph (exported into the cache in a child process if missing)."""
    code = (
        "import sys; from gradtap.export.models.to_onnx import model_path; "
        "print(model_path(sys.argv[1], sys.argv[2], augmented=True))"
    )
    done = subprocess.run([sys.executable, "-c", code, model, weights], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return Path(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Measure:
    seconds: float
    peak_rss_mib: float


def measure(cmd: list[str], timeout: float = 1800) -> Measure:
    """Run ``cmd`` to its end; wall time and the child's peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            raise TimeoutError(" ".join(cmd))
        time.sleep(0.005)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode not in (0,):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err[-2000:]}")
    return Measure(seconds, usage.ru_maxrss / 1024)


def command(side: str, model: str, weights: str, path: Path, folder: Path, out: Path,
            methods: tuple[str, ...], fmt: str, batch: int, threads: int) -> list[str]:  # fmt: skip
    """The command line of one side."""
    if side.startswith("gradtap"):
        cmd = [sys.executable, "-m", "gradtap.cli", "-q", "--threads", str(threads), "explain", str(folder), "-M", str(path),
               "-m", ",".join(methods), "--format", fmt, "-b", str(batch), "-o", str(out),
               "--overwrite"]  # fmt: skip
        return cmd + (["--serial"] if side.endswith("--serial") else [])
    library = "gradcam" if side == "pytorch-grad-cam" else "captum"
    return [sys.executable, "-m", "bench.e2e_scripts", library, model, weights, str(folder),
            str(out), "--batch", str(batch), "--format", fmt, "--methods", ",".join(methods),
            "--threads", str(threads)]  # fmt: skip


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    path = args.graph or graph(args.model, args.weights)
    rows = []
    for n in args.sizes:
        folder = photos(n, small=args.smoke)
        for work in args.workloads:
            for fmt in args.formats:
                for side in (s for s in SIDES[work] if s in args.sides):
                    runs = []
                    for _ in range(args.repeat):
                        with tempfile.TemporaryDirectory(prefix="gradtap-e2e-") as tmp:
                            cmd = command(side, args.model, args.weights, path, folder,
                                          Path(tmp) / "out", WORKLOADS[work], fmt, args.batch, args.threads)  # fmt: skip
                            runs.append(measure(cmd))
                    sec = statistics.median(m.seconds for m in runs)
                    rss = statistics.median(m.peak_rss_mib for m in runs)
                    rows.append({"images": n, "work": work, "format": fmt, "side": side,
                                 "seconds": sec, "rss": rss})  # fmt: skip
                    print(f"  {n} {work} {fmt} {side}: {sec:.2f} s, {rss:.0f} MiB", file=sys.stderr)
    return rows


def report(rows: list[dict[str, object]], args: argparse.Namespace) -> str:
    """The Markdown table: one row per side, with gradtap's speed-up over it."""
    lines = [
        f"## End to end: {args.model}, batch {args.batch}, {args.threads} compute thread(s) "
        f"per side, median of {args.repeat} run(s)",
        "",
        "| images | methods | format | side | seconds | images/s | peak RSS MiB | gradtap speed-up |",
        "|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        ref = next(r for r in rows if r["side"] == "gradtap" and
                   all(r[k] == row[k] for k in ("images", "work", "format")))  # fmt: skip
        methods = "+".join(WORKLOADS[str(row["work"])])
        lines.append(
            f"| {row['images']} | {methods} | {row['format']} | {row['side']} | "
            f"{row['seconds']:.2f} | {int(row['images']) / float(row['seconds']):.1f} | "
            f"{float(row['rss']):.0f} | {float(row['seconds']) / float(ref['seconds']):.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--sizes", default="20,200", type=lambda s: [int(v) for v in s.split(",")])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument(
        "--threads", type=int, default=1, help="compute threads on every side (as make bench)"
    )
    ap.add_argument("--workloads", default="gradcam,three", type=lambda s: s.split(","))
    ap.add_argument("--formats", default="overlay,npy", type=lambda s: s.split(","))
    ap.add_argument("--smoke", action="store_true",
                    help="CI check: smallcnn, 3 small photos, one run, one workload")  # fmt: skip
    ap.add_argument("--sides", default=",".join(SIDES["gradcam"]), type=lambda s: s.split(","))
    ap.add_argument("--graph", type=Path, help="the explanation graph [default: exported]")
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args(argv)
    if args.smoke:
        args.model, args.weights = "smallcnn", str(ROOT / "models" / "smallcnn.pt")
        args.sizes, args.repeat, args.workloads = [3], 1, ["gradcam"]
        args.graph = ROOT / "models" / "smallcnn.gradtap.onnx"
    text = report(run(args), args)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
