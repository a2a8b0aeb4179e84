"""FullGrad: gradtap against pytorch-grad-cam at equal settings.

``python bench/fullgrad.py [--model resnet18] [--images 4] [--threads 2] [--batch 16]``

Both sides get the same weights (``random`` unless ``--weights``; every BatchNorm's statistics
and affine parameters are then drawn at random so that no bias is zero), the same images and
target. pytorch-grad-cam hooks every Conv2d/BatchNorm2d with a bias, runs one forward and
backward pass and post-processes the bias-gradients in numpy; gradtap runs one call of a graph
augmented with ``bias_gradients=True``, which returns each layer's map already reduced. Prints
seconds per image, the speed-up and the largest difference of the min-max scaled maps.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pytorch_grad_cam import FullGrad  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from bench.scorecam import _best  # noqa: E402
from gradtap.export.graph.augment import augment, load_model  # noqa: E402
from gradtap.export.models.to_onnx import export_forward  # noqa: E402
from gradtap.export.models.zoo import build, pixel_space  # noqa: E402
from gradtap.runtime.methods.fullgrad import fullgrad  # noqa: E402
from gradtap.runtime.present.postprocess import minmax  # noqa: E402
from gradtap.runtime.session import ExplainSession  # noqa: E402

TARGET = 1


def randomise_batchnorm(net: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial BatchNorm biases (random init leaves them all zero)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = torch.randn(n, generator=g) * 0.5
            m.running_mean = torch.randn(n, generator=g) * 0.5
            m.running_var = 0.5 + torch.rand(n, generator=g)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--weights", default="random")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("build/bench-fullgrad"))
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    model, spec = build(args.model, args.weights)
    if args.weights == "random":
        randomise_batchnorm(model)
    net = pixel_space(model, spec).eval()
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / f"{args.model}.pt"
    torch.save(model.state_dict(), weights)
    forward = export_forward(args.model, args.out / f"{args.model}.onnx", weights=weights)
    graph = augment(load_model(forward), bias_gradients=True)
    session = ExplainSession(graph, threads=args.threads, batch_size=args.batch)
    h, w = session.info.input_size
    x = np.random.default_rng(0).random((args.images, 3, h, w), dtype=np.float32)
    targets = [ClassifierOutputTarget(TARGET)] * args.images

    def theirs() -> object:
        with FullGrad(model=net, target_layers=[]) as cam:
            return cam(input_tensor=torch.from_numpy(x), targets=targets)

    ours: Callable[[], object] = lambda: fullgrad(session, x, TARGET).maps  # noqa: E731
    print(f"{args.model} ({args.weights}), {args.images} image(s) {h}x{w}, "
          f"{len(session.bias_outputs)} biased layers, batch {args.batch}, {args.threads} threads")  # fmt: skip
    print("seconds per image, wall clock (CPU time of the process, all threads)")
    print(f"{'method':<12} {'pytorch-grad-cam':>20} {'gradtap':>20} {'speed-up wall (cpu)':>20}")
    t_ref, c_ref, ref = _best(theirs, args.repeats)
    t_ours, c_ours, maps = _best(ours, args.repeats)
    err = float(np.abs(np.stack([minmax(m) for m in maps]) - ref).max())  # type: ignore[operator, union-attr]
    n = args.images
    print(f"{'fullgrad':<12} {t_ref / n:>10.3f} ({c_ref / n:>6.3f}) {t_ours / n:>10.3f} "
          f"({c_ours / n:>6.3f}) {t_ref / t_ours:>11.2f}x ({c_ref / c_ours:.2f}x)"
          f"   max map difference {err:.1e}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
