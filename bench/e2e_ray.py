"""Ray engine scaling: images/s with 1, 2, ... workers on this machine, and memory per worker.

``python bench/e2e_ray.py [--images 200] [--workers 1,2] [--model resnet50]``
(``make bench-ray``).

Each point is one ``gradtap explain FOLDER --engine ray --workers W --threads T`` process on a
local Ray instance, with T = cores // W onnxruntime threads per worker so the workers share the
cores instead of fighting over them. Reported from the run's summary.json: the explaining time
(from the first batch sent to the last row written: Ray's start-up is shown apart), images/s,
the largest worker's peak RSS, and the driver's peak RSS (``wait4``). The single-process
pipelined CLI on the same folder is the baseline row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.e2e import graph, measure, photos  # noqa: E402


def point(path: Path, folder: Path, n: int, workers: int | None, threads: int, fmt: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="gradtap-ray-") as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "gradtap.cli", "-q", "--threads", str(threads), "explain",
               str(folder), "-M", str(path), "-m", "gradcam", "--format", fmt, "-o", str(out)]  # fmt: skip
        if workers:
            cmd += ["--engine", "ray", "--workers", str(workers)]
        m = measure(cmd, timeout=3600)
        run = json.loads((out / "summary.json").read_text())["runs"][-1]
    ray = run["options"].get("ray", {})
    seconds = ray.get("explain_seconds", m.seconds)
    return {
        "engine": f"ray, {workers} worker(s)" if workers else "local (pipelined)",
        "threads": threads,
        "seconds": seconds,
        "startup": ray.get("startup_seconds"),
        "images_s": n / seconds,
        "worker_rss": ray.get("worker_peak_rss_mib"),
        "driver_rss": m.peak_rss_mib,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--graph", type=Path)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--workers", default="1,2", type=lambda s: [int(v) for v in s.split(",")])
    ap.add_argument("--format", default="overlay")
    ap.add_argument("--small", action="store_true", help="64-96 pixel photos (smoke runs)")
    args = ap.parse_args()
    path = args.graph or graph(args.model, args.weights)
    folder = photos(args.images, small=args.small)
    cores = os.cpu_count() or 1
    rows = [point(path, folder, args.images, None, cores, args.format)]
    for w in args.workers:
        rows.append(point(path, folder, args.images, w, max(1, cores // w), args.format))
        print(f"  {rows[-1]}", file=sys.stderr)
    base = rows[1]["images_s"] if len(rows) > 1 else rows[0]["images_s"]
    print(
        f"## Ray engine: {args.model}, Grad-CAM, {args.images} photos, {args.format}, {cores} cores\n"
    )
    print("| engine | threads/worker | explain s | Ray start-up s | images/s | vs 1 worker "
          "| worker peak RSS MiB | driver peak RSS MiB |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        startup = f"{r['startup']:.1f}" if r["startup"] is not None else "-"
        wrss = f"{r['worker_rss']:.0f}" if r["worker_rss"] is not None else "-"
        print(f"| {r['engine']} | {r['threads']} | {r['seconds']:.2f} | {startup} | "
              f"{r['images_s']:.2f} | {r['images_s'] / base:.2f}x | {wrss} | {r['driver_rss']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
