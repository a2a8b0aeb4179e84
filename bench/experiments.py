"""The measurements behind the runtime recommendations in docs/benchmarks.md.

``python -m bench.experiments [--model resnet50] [--threads 2]`` prints markdown. Every
measurement runs in a fresh process (``--child``) so its memory numbers are its own.

- options: onnxruntime session settings against the fused forward+backward pass.
- memory: resident memory of an ExplainSession as its graph variants are built.
- external: the three variants sharing one memory-mapped weights file (external data).
- fgsm: FGSM with the cross-entropy seed computed inside the graph (one call instead of two).
- convtranspose: the backward pass's stride-1 ConvTranspose nodes rewritten as Conv.
- threadpools: one onnxruntime thread pool per variant session, without spinning, or global.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bench import probes
from bench.probes import OPTIONS

CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "options": probes.child_options,
    "memory": probes.child_memory,
    "external": probes.child_external,
    "fgsm": probes.child_fgsm,
    "convtranspose": probes.child_convtranspose,
    "threadpools": probes.child_threadpools,
}


def spawn(name: str, *args: object) -> dict[str, Any]:
    """Run one child measurement in a fresh process and return its JSON answer."""
    cmd = [sys.executable, "-m", "bench.experiments", "--child", name, *map(str, args)]
    done = subprocess.run(
        cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:.0f} MiB" for k, v in value.items())
    if isinstance(value, float):
        return f"{value * 1000:.1f} ms" if value < 30 else f"{value:.0f} MiB"
    return str(value)


def report(path: str, threads: int, repeats: int, only: list[str]) -> list[str]:
    """Markdown sections, one per experiment."""
    lines = [f"# Runtime experiments: {Path(path).name}, {threads} threads", ""]
    if "options" in only:
        lines += [
            "## Session options (full forward+backward pass)",
            "",
            "| option | RSS after load | batch 1 | batch 8 | peak RSS |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name in OPTIONS:
            r = spawn("options", path, threads, name, repeats)
            cells = [
                _fmt(r.get(k, r.get("error", "–"))) for k in ("rss_after_load", "b1", "b8", "peak")
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if "threadpools" in only:
        from bench.fastpath import POOLS

        runs = {mode: spawn("threadpools", path, threads, mode, repeats) for mode in POOLS}
        keys = list(runs["per_session"])
        lines += [
            "## Thread pools of the graph variants",
            "",
            "| case | " + " | ".join(POOLS) + " |",
            "| --- |" + " ---: |" * len(POOLS),
        ]
        lines += [
            f"| {k} | " + " | ".join(_fmt(runs[m].get(k, "–")) for m in POOLS) + " |" for k in keys
        ]
        lines.append("")
    for name, title in (
        ("memory", "ExplainSession memory as variants are built"),
        ("external", "Variants sharing one external weights file (mmap)"),
        ("fgsm", "FGSM: CE seed inside the graph"),
        ("convtranspose", "Backward convolutions: ConvTranspose as Conv"),
    ):
        if name in only:
            args = (
                (path, threads, repeats) if name in ("fgsm", "convtranspose") else (path, threads)
            )
            result = spawn(name, *args)
            lines += [f"## {title}", "", *(f"- {k}: {_fmt(v)}" for k, v in result.items()), ""]
    return lines


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--model", default="resnet50", help="A model name of bench.config, or a file.")
@click.option("--threads", default=2, type=click.IntRange(min=1))
@click.option("--repeats", default=5, type=click.IntRange(min=1))
@click.option(
    "--only",
    default="options,memory,external,fgsm,convtranspose,threadpools",
    help="Experiments to run.",
)
@click.option("--child", hidden=True)
@click.argument("args", nargs=-1)
def main(
    model: str, threads: int, repeats: int, only: str, child: str | None, args: tuple[str, ...]
) -> None:
    """Measure the runtime fast-path candidates; print markdown."""
    if child:
        conv = [int(a) if a.isdigit() else a for a in args]
        click.echo(json.dumps(CHILDREN[child](*conv)))
        return
    path = model
    if not Path(model).is_file():
        from bench.orchestrate import prepare

        with tempfile.TemporaryDirectory() as tmp:
            path = prepare(model, Path(tmp), coldstart_files=False)["graph"]
    click.echo("\n".join(report(path, threads, repeats, [o.strip() for o in only.split(",")])))


if __name__ == "__main__":
    main()
