"""What the LRP walk costs gradient calls, and what an LRP call costs.

``python bench/lrp.py [--models smallcnn,resnet18] [--batch 4] [--repeat 10] [--threads 2]``

Each model is augmented twice from the same forward graph: with the relevance walk (``--lrp``,
switched by ``relu_rule``) and without it. Prints the median seconds of a plain full call
(logits and input gradient) on both, their ratio (the walk's overhead on gradient calls, which
run none of it), an ``lrp_epsilon_plus`` call on the first, and the memory each session takes
when it is created (resident set growth: the weights and what onnxruntime folds at load time).
Then the same for the flat variant (no If nodes, for tract), which carries one composite
(``lrp_composite="epsilon_plus"``) whose walk runs in every call.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from gradtap.export.graph import augment as augment_module  # noqa: E402
from gradtap.export.models.to_onnx import export_forward  # noqa: E402
from gradtap.runtime.session import ExplainSession  # noqa: E402


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _session(model: object, threads: int) -> tuple[ExplainSession, float]:
    """A session and the MiB its creation added to the resident set."""
    before = _rss()
    session = ExplainSession(model, threads=threads)
    return session, (_rss() - before) / 2**20


def _median_call(session: ExplainSession, x: np.ndarray, rule: str, repeat: int) -> float:
    seed = np.zeros((len(x), session.info.num_classes), np.float32)
    seed[:, 0] = 1
    session.run(x, seed, relu_rule=rule)  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(x, seed, relu_rule=rule)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smallcnn,resnet18")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    variants = {
        "gated": ({"lrp": True}, {}),
        "flat": ({"flat": True, "lrp_composite": "epsilon_plus"}, {"flat": True}),
    }
    for variant, (walk, plain_options) in variants.items():
        print(
            f"{variant} graph: model | plain s (with LRP walk) | plain s (without) | ratio"
            " | lrp_epsilon_plus s | session MiB (with) | session MiB (without)"
        )
        for name in args.models.split(","):
            _row(name, walk, plain_options, args)


def _row(name: str, walk: dict, plain_options: dict, args: argparse.Namespace) -> None:
    """One model: a session with the walk and one without, each timed and measured."""
    with tempfile.TemporaryDirectory() as tmp:
        forward = Path(tmp) / "forward.onnx"
        export_forward(name, forward)
        model = augment_module.load_model(forward)
        with_walk = augment_module.augment(model, **walk)
        without = augment_module.augment(model, **plain_options)
    made = [_session(m, args.threads) for m in (without, with_walk)][::-1]
    sessions, memory = [s for s, _ in made], [mib for _, mib in made]
    h, w = sessions[0].info.input_size
    x = np.random.default_rng(0).random((args.batch, 3, h, w), dtype=np.float32)
    plain = [_median_call(s, x, "plain", args.repeat) for s in sessions]
    lrp = _median_call(sessions[0], x, "lrp_epsilon_plus", args.repeat)
    print(
        f"{name} | {plain[0]:.4f} | {plain[1]:.4f} | {plain[0] / plain[1]:.3f} | {lrp:.4f}"
        f" | {memory[0]:.0f} | {memory[1]:.0f}"
    )


if __name__ == "__main__":
    main()
