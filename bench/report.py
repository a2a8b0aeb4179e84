"""Markdown tables of the benchmark results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench import config as cfg
from bench.coldstart import Run
from bench.footprint import Footprint
from bench.suite import ModelResult

MIB = 2**20

# Why gradtap can be slower than a torch-side library on a method: structural, not noise.
SLOWER_BECAUSE = {
    "fgsm": "one fused forward+backward call on every side (gradtap computes the cross-entropy "
    "seed inside the graph; its Attack.logits_after is computed on first use, outside the "
    "timing), so the gap is the engines' speed on this model",
    "occlusion": "forward-only calls: gradtap's graph also holds the gated backward pass, so "
    "onnxruntime converts the activations that pass reads out of its blocked (NCHWc) layout "
    "even while the pass is off",
    "class_vis_step": "the step ends with a forward pass for the logit trajectory (mirrored on the "
    "torch side)",
}
# ... and on a model, where no method-specific reason applies.
SLOWER_ON_MODEL = {
    "efficientnet_lite0": "the graph is mostly depthwise convolutions, which run memory-bound on "
    "both sides (see the GFLOP/s table), so the engines run at about the same speed",
}
CAVEATS = {
    ("efficientnet_lite0", "guided_backprop"): "captum and pytorch-grad-cam hook only nn.ReLU; "
    "EfficientNet-Lite0's ReLU6 gets the plain gradient there (gradtap and torch autograd are "
    "guided)",
    ("efficientnet_lite0", "guided_gradcam"): "as guided backprop: ReLU6 not guided in captum "
    "and pytorch-grad-cam",
}
LIBRARY_NOTES = {
    "gradcam": "pytorch-grad-cam's GuidedBackpropReLUModel explains only the first image of a "
    "batch, so it is called once per image; its GradCAM upsamples to the input size and "
    "normalises; it calls loss.backward(), which computes weight gradients too",
}


def ms(timing: Any) -> str:
    """A timing cell: median ms and the number of timed runs."""
    if isinstance(timing, str):
        return timing
    value = timing["median"] * 1000
    text = f"{value:.0f}" if value >= 100 else f"{value:.1f}"
    return text + f" (n={timing['runs']})"


def ratio(other: Any, ref: Any) -> str:
    """other ÷ reference, or a dash."""
    if isinstance(other, str) or isinstance(ref, str):
        return "–"
    return f"{other['median'] / ref['median']:.2f}x"


def timing_table(results: Sequence[ModelResult], libraries: Sequence[str]) -> list[str]:
    """The main table: one row per (model, batch, method)."""
    others = [lib for lib in libraries if lib != cfg.REFERENCE]
    head = ["model", "batch", "method", *(cfg.LIBRARY_TITLES[lib] for lib in libraries)]
    head += [f"{cfg.LIBRARY_TITLES[lib]} ÷ gradtap" for lib in others]
    lines = [_row(head), _row(["---"] * 3 + ["---:"] * (len(head) - 3))]
    for res in results:
        for (batch, method), cell in res.cells.items():
            ref = cell.get(cfg.REFERENCE, "n/a")
            row = [res.model, str(batch), cfg.titles()[method]]
            row += [ms(cell.get(lib, "n/a")) for lib in libraries]
            row += [ratio(cell.get(lib, "n/a"), ref) for lib in others]
            lines.append(_row(row))
    return lines


def slower_notes(results: Sequence[ModelResult], libraries: Sequence[str]) -> list[str]:
    """One line per cell where gradtap is slower than another library, with the reason."""
    lines = []
    for res in results:
        for (batch, method), cell in res.cells.items():
            ref = cell.get(cfg.REFERENCE)
            if not isinstance(ref, dict):
                continue
            slower = [
                f"{cfg.LIBRARY_TITLES[lib]} {cell[lib]['median'] / ref['median']:.2f}x"
                for lib in libraries
                if lib != cfg.REFERENCE
                and isinstance(cell.get(lib), dict)
                and cell[lib]["median"] < ref["median"]
            ]
            if slower:
                why = SLOWER_BECAUSE.get(method) or SLOWER_ON_MODEL.get(
                    res.model, "no structural reason known: see the notes"
                )
                lines.append(
                    f"- {res.model}, batch {batch}, {cfg.titles()[method]}: "
                    f"{', '.join(slower)}. Why: {why}."
                )
    return lines or ["- none: gradtap is at least as fast as every other library in every cell"]


def caveat_notes(results: Sequence[ModelResult], libraries: Sequence[str]) -> list[str]:
    """What differs between the libraries' computations, for the models and methods run."""
    seen = {(r.model, m) for r in results for (_, m) in r.cells}
    lines = [
        f"- {cfg.titles()[m]} on {model}: {text}."
        for (model, m), text in CAVEATS.items()
        if (model, m) in seen
    ]
    lines += [
        f"- {cfg.LIBRARY_TITLES[lib]}: {text}."
        for lib, text in LIBRARY_NOTES.items()
        if lib in libraries
    ]
    return lines


def flops_table(
    results: Sequence[ModelResult], flops: dict[str, dict[str, float]], peak: float
) -> list[str]:
    """Achieved GFLOP/s of one saliency call (forward + backward to the input)."""
    head = [
        "model",
        "forward GFLOP/image",
        "backward GFLOP/image",
        "batch",
        "gradtap GFLOP/s",
        "% of best matmul",
        "torch autograd GFLOP/s",
    ]
    lines = [_row(head), _row(["---"] + ["---:"] * (len(head) - 1))]
    for res in results:
        f = flops[res.model]
        for (batch, method), cell in res.cells.items():
            if method != "saliency":
                continue
            work = (f["forward"] + f["backward"]) * batch
            gt, pt = cell.get("gradtap"), cell.get("torch")
            rate = work / gt["median"] if isinstance(gt, dict) else None
            lines.append(
                _row(
                    [
                        res.model,
                        f"{f['forward']:.2f}",
                        f"{f['backward']:.2f}",
                        str(batch),
                        f"{rate:.1f}" if rate else "–",
                        f"{100 * rate / peak:.0f}%" if rate else "–",
                        f"{work / pt['median']:.1f}" if isinstance(pt, dict) else "–",
                    ]
                )
            )
    return lines


def rss_table(results: Sequence[ModelResult], libraries: Sequence[str]) -> list[str]:
    """Peak RSS and load time of each library's worker, per model."""
    head = ["model", *(cfg.LIBRARY_TITLES[lib] for lib in libraries)]
    lines = [_row(head), _row(["---"] + ["---:"] * len(libraries))]
    for res in results:
        cells = [
            f"{res.peak_rss_mb[lib]:.0f} MiB (load {res.load_s[lib]:.1f} s)"
            if lib in res.peak_rss_mb
            else "–"
            for lib in libraries
        ]
        lines.append(_row([res.model, *cells]))
    return lines


def agreement_lines(results: Sequence[ModelResult]) -> list[str]:
    """Max |logits - gradtap logits| per library: the same weights and inputs on every side."""
    lines = []
    for res in results:
        diffs = ", ".join(f"{cfg.LIBRARY_TITLES[k]} {v:.1e}" for k, v in res.logits_diff.items())
        torch_free = "no" if res.torch_imported.get("gradtap") else "yes"
        lines.append(
            f"- {res.model}: max |Δ logits| vs gradtap: {diffs or '–'}; "
            f"gradtap worker torch-free: {torch_free}"
        )
    return lines


def coldstart_table(runs: Sequence[Run]) -> list[str]:
    """Cold-start wall time and peak RSS per command."""
    lines = [_row(["command", "wall time (median)", "peak RSS"]), _row(["---", "---:", "---:"])]
    lines += [_row([r.label, f"{r.wall_s:.2f} s", f"{r.peak_rss_mb:.0f} MiB"]) for r in runs]
    if len(runs) >= 2 and runs[0].wall_s > 0:
        lines.append("")
        lines.append(
            f"captum script ÷ gradtap CLI: {runs[1].wall_s / runs[0].wall_s:.2f}x wall "
            f"time, {runs[1].peak_rss_mb / runs[0].peak_rss_mb:.2f}x peak RSS"
        )
    return lines


def footprint_table(gradtap: Footprint, torch: Footprint) -> list[str]:
    """Installed sizes, alone and with everything required."""
    lines = [
        _row(["dependency set", "distributions alone", "with their requirements"]),
        _row(["---", "---:", "---:"]),
    ]
    for label, f in (("gradtap runtime", gradtap), ("torch + torchvision + captum", torch)):
        lines.append(
            _row(
                [
                    label,
                    f"{f.named / MIB:.0f} MiB",
                    f"{f.closure / MIB:.0f} MiB ({len(f.closure_names)} distributions)",
                ]
            )
        )
    lines.append("")
    lines.append(
        f"gradtap ÷ torch stack: {gradtap.named / torch.named:.3f} (alone), "
        f"{gradtap.closure / torch.closure:.3f} (with requirements)"
    )
    return lines


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
