"""The benchmark run: options, preparation in subprocesses, the suites, and the report.

This process stays small (no torch, no model in memory): every child process it spawns starts
with its parent's resident memory, which would otherwise inflate the children's peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from bench import coldstart, config, footprint, machine, report, suite
from bench.flops import matmul_peak
from bench.timing import MIN_SECONDS

COLDSTART_MODEL = "resnet50"
PEAK_LIBRARIES = ("numpy", "torch", "onnxruntime")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def prepare(model: str, folder: Path, *, coldstart_files: bool) -> dict[str, Any]:
    """Run ``bench.prepare`` for one model in a subprocess."""
    cmd = [sys.executable, "-m", "bench.prepare", model, config.WEIGHTS.get(model, "random")]
    cmd += [str(folder)] + (["--coldstart"] if coldstart_files else [])
    done = subprocess.run(cmd, cwd=suite.ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise click.ClickException(f"preparing {model} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def settings_lines(opts: dict[str, Any]) -> list[str]:
    """What was run, as markdown bullets."""
    st = config.settings()
    return [
        f"- threads: {opts['threads']} on every side (torch.set_num_threads, onnxruntime "
        "intra-op threads; inter-op 1)",
        f"- repeats: median of at least {opts['repeats']} timed runs after one warm-up run, "
        f"more while a cell has run under {opts['min_seconds']:.0f} s (n in the table); a cell stops "
        f"early once it has run {opts['budget']:.0f} s",
        f"- inputs: seeded uniform pixels, {config.TARGET_CLASS}-th class explained for every "
        f"image; SmoothGrad {st.smoothgrad_samples} samples (noise "
        f"{config.SMOOTHGRAD_NOISE}), IG {st.ig_steps} Gauss-Legendre steps from black, "
        f"occlusion {st.occlusion_window}px windows stride {st.occlusion_window}, "
        f"FGSM eps 2/255, sampling methods in calls of {config.CHUNK_ROWS} rows on every side",
    ]


def build_report(opts: dict[str, Any], parts: dict[str, Any]) -> str:
    """The whole markdown report."""
    libs, results = opts["libraries"], parts["results"]
    lines = ["# gradtap benchmark", "", *machine.summary()]
    lines += [
        f"- load average (1/5/15 min): {parts['load_before']} before, {parts['load_after']} after",
        *settings_lines(opts),
        "",
    ]
    lines += [
        "## Time per call",
        "",
        "Median milliseconds; `X ÷ gradtap` above 1 means gradtap is faster.",
        "",
        *report.timing_table(results, libs),
        "",
    ]
    lines += ["### Where gradtap is slower", "", *report.slower_notes(results, libs), ""]
    lines += ["### Differences between the libraries", "", *report.caveat_notes(results, libs), ""]
    lines += ["### Same weights, same inputs", "", *report.agreement_lines(results), ""]
    peaks = parts["peaks"]
    refs = ", ".join(f"{lib} {value:.0f}" for lib, value in peaks.items())
    lines += [
        "## Achieved GFLOP/s of the fused forward+backward (saliency)",
        "",
        f"float32 2048² matmul at {opts['threads']} threads, GFLOP/s: {refs}. The backward "
        "pass is counted from the graph: the input gradient only, no weight gradients.",
        "",
        *report.flops_table(results, parts["flops"], max(peaks.values())),
        "",
    ]
    lines += [
        "## Peak RSS per library (all cells of a model, one process each)",
        "",
        *report.rss_table(results, libs),
        "",
    ]
    if parts.get("coldstart"):
        lines += [
            f"## Cold start: one image, {COLDSTART_MODEL}, saliency of the predicted class",
            "",
            *report.coldstart_table(parts["coldstart"]),
            "",
        ]
    lines += ["## Installed size", "", *report.footprint_table(*parts["footprint"]), ""]
    return "\n".join(lines)


def run(opts: dict[str, Any]) -> str:
    """Measure everything asked for and return the report."""
    parts: dict[str, Any] = {"load_before": machine.load(), "results": [], "flops": {}}
    with tempfile.TemporaryDirectory(prefix="gradtap-bench-") as tmp:
        folder = Path(tmp)
        for model in opts["models"]:
            prep = prepare(model, folder, coldstart_files=False)
            parts["flops"][model] = prep["flops"]
            parts["results"].append(
                suite.run_model(
                    model,
                    config.WEIGHTS.get(model, "random"),
                    prep["graph"],
                    libraries=opts["libraries"],
                    batches=opts["batches"],
                    methods=opts["methods"],
                    threads=opts["threads"],
                    repeats=opts["repeats"],
                    budget_s=opts["budget"],
                    min_s=opts["min_seconds"],
                )
            )
        if opts["coldstart"]:
            prep = prepare(COLDSTART_MODEL, folder, coldstart_files=True)
            parts["coldstart"] = coldstart.measure(
                Path(prep["graph"]),
                Path(prep["state_dict"]),
                COLDSTART_MODEL,
                Path(prep["photo"]),
                threads=opts["threads"],
                runs=opts["coldstart_runs"],
            )
    parts["peaks"] = {lib: matmul_peak(opts["threads"], lib) for lib in PEAK_LIBRARIES}
    parts["footprint"] = (
        footprint.footprint(footprint.GRADTAP_RUNTIME),
        footprint.footprint(footprint.TORCH_STACK),
    )
    parts["load_after"] = machine.load()
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return build_report(opts, parts) + f"\n(benchmark driver peak RSS: {parent:.0f} MiB)\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--models", default=",".join(config.MODELS), help="Comma-separated model names.")
@click.option("--batches", default="1,8", help="Comma-separated batch sizes.")
@click.option("--methods", default=",".join(config.METHODS), help="Comma-separated methods.")
@click.option(
    "--libraries",
    default=",".join(config.LIBRARIES),
    help="Sides to compare.",
)
@click.option("--repeats", default=5, type=click.IntRange(min=1), help="Timed runs per cell.")
@click.option("--budget", default=60.0, type=float, help="Seconds after which a cell stops.")
@click.option(
    "--min-seconds", default=MIN_SECONDS, type=float, help="Fast cells repeat at least this long."
)
@click.option("--threads", default=os.cpu_count() or 1, type=click.IntRange(min=1))
@click.option("--coldstart/--no-coldstart", default=True, help="Measure the CLI cold start.")
@click.option("--coldstart-runs", default=5, type=click.IntRange(min=1))
@click.option("--smoke", is_flag=True, help="Tiny run (smallcnn, batch 1, 1 repeat, seconds).")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the report here.")
def main(**opts: Any) -> None:
    """Benchmark gradtap against captum, pytorch-grad-cam and torch autograd; print markdown."""
    for key in ("models", "methods", "libraries"):
        opts[key] = _csv(opts[key])
    opts["batches"] = [int(b) for b in _csv(opts["batches"])]
    if opts["smoke"]:
        os.environ[config.SMOKE_ENV] = "1"  # read by the workers
        opts.update(
            models=list(config.SMOKE_MODELS),
            batches=[1],
            repeats=1,
            budget=5.0,
            min_seconds=0.0,
            coldstart=False,
        )
    bad = [m for m in opts["methods"] if m not in config.METHODS]
    bad += [lib for lib in opts["libraries"] if lib not in config.LIBRARY_TITLES]
    if bad or config.REFERENCE not in opts["libraries"]:
        raise click.BadParameter(
            f"unknown {bad} or gradtap missing; methods "
            f"{config.METHODS}, libraries {config.LIBRARIES}"
        )
    text = run(opts)
    click.echo(text)
    if opts["out"]:
        Path(opts["out"]).write_text(text, encoding="utf-8")
