"""Score-CAM and Ablation-CAM: gradtap against pytorch-grad-cam at equal settings.

``python bench/scorecam.py [--model resnet18] [--weights random] [--images 1] [--photos]``

Both sides get the same weights (``random`` unless ``--weights``), the same images (seeded noise,
or with ``--photos`` scikit-image's photos, resized), target, tap,
batch size and thread count. pytorch-grad-cam's ScoreCAM masks the input with every upsampled
tap channel and runs one forward pass per channel; its AblationCAM replaces the tap module by one
that returns the cached activation with a channel zeroed. gradtap runs the same numbers of
forward passes through one onnxruntime session (Ablation-CAM through the graph's ``tap_scale``
input). Prints seconds per image and the speed-up; the maps are checked to agree first.

Row ``forward``: one batch of masked-size images through the plain network, torch against
onnxruntime on the forward graph, in the same conditions. Score-CAM at equal settings is that many
forward passes on both sides, so this ratio bounds its speed-up.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from pytorch_grad_cam import AblationCAM, ScoreCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from gradtap.export.graph.augment import augment, load_model  # noqa: E402
from gradtap.export.models.to_onnx import model_path  # noqa: E402
from gradtap.export.models.zoo import build, pixel_space, tap_module  # noqa: E402
from gradtap.runtime.image.geometry import resize  # noqa: E402
from gradtap.runtime.methods.cam import tap_pass  # noqa: E402
from gradtap.runtime.methods.cam_score import ablationcam, scorecam  # noqa: E402
from gradtap.runtime.present.postprocess import minmax  # noqa: E402
from gradtap.runtime.session import ExplainSession  # noqa: E402

TARGET = 1
# maps in [0, 1]; logits relative to the largest. Float32 rounding is 1e-5 here, except where
# Ablation-CAM's weights (S - S_k) / S cancel on a small target logit S: on EfficientNet-Lite0
# (S = 0.17) pytorch-grad-cam's map was 1.4e-4 off the float64 one, gradtap's 2.3e-6
TOL = {"forward": 1e-4, "scorecam": 1e-4, "ablationcam": 1e-3}


def _best(call: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Best wall-clock and process CPU seconds of ``repeats`` calls, and the last result."""
    wall, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        with contextlib.redirect_stderr(io.StringIO()):  # pytorch-grad-cam's progress bars
            out = call()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu, out


PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "coins", "hubble_deep_field")


def noise(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def photos(n: int, size: tuple[int, int]) -> np.ndarray:
    """``n`` of scikit-image's photos (cycled), RGB in [0, 1], resized to ``size``: [n, 3, H, W]."""
    from skimage import color, data

    out = []
    for i in range(n):
        rgb = getattr(data, PHOTOS[i % len(PHOTOS)])()
        if rgb.ndim == 2:
            rgb = color.gray2rgb(rgb)
        out.append(resize(rgb[..., :3].astype(np.float32) / 255, size).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--weights", default="random")
    p.add_argument("--images", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--photos", action="store_true", help="scikit-image's photos, not noise")
    p.add_argument("--methods", default="forward,scorecam,ablationcam", help="comma-separated")
    p.add_argument(
        "--lean",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the session's lean memory options (default on, as the CLI runs)",
    )
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    model, spec = build(args.model, args.weights)
    net = pixel_space(model, spec).eval()
    layer = tap_module(net.model, spec)
    forward = load_model(model_path(args.model, args.weights))
    session = ExplainSession(
        augment(forward, interventions=True),  # tap_scale, for Ablation-CAM
        threads=args.threads,
        batch_size=args.batch,
        lean=args.lean,
    )
    h, w = session.info.input_size
    x = photos(args.images, (h, w)) if args.photos else noise((args.images, 3, h, w))
    targets = [ClassifierOutputTarget(TARGET)] * args.images

    def theirs(cam_class: type, **kw: object) -> Callable[[], object]:
        def call() -> object:
            with cam_class(model=net, target_layers=[layer], **kw) as cam:
                cam.batch_size = args.batch
                return cam(input_tensor=torch.from_numpy(x), targets=targets)

        return call

    batch = np.random.default_rng(1).random((args.batch, 3, h, w), dtype=np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    plain = ort.InferenceSession(
        forward.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feed = {plain.get_inputs()[0].name: batch}

    def torch_forward() -> object:
        with torch.no_grad():
            return net(torch.from_numpy(batch)).numpy()

    cases = {
        "forward": (torch_forward, lambda: plain.run(None, feed)[0]),
        "scorecam": (theirs(ScoreCAM), lambda: scorecam(session, x, TARGET).maps),
        "ablationcam": (
            theirs(AblationCAM, batch_size=args.batch),
            lambda: ablationcam(session, x, TARGET).maps,
        ),
    }
    what = "photo(s)" if args.photos else "noise image(s)"
    print(f"{args.model} ({args.weights}), {args.images} {what} {h}x{w}, "
          f"tap {session.info.tap(None)} ({session.tap_channels} channels), "
          f"batch {args.batch}, {args.threads} threads")  # fmt: skip
    print("seconds per image, wall clock (CPU time of the process, all threads)")
    print(f"{'method':<12} {'pytorch-grad-cam':>20} {'gradtap':>20} {'speed-up wall (cpu)':>20}")
    disagree: list[str] = []
    for name, (ref_call, our_call) in cases.items():
        if name not in args.methods.split(","):
            continue
        t_ref, c_ref, ref = _best(ref_call, args.repeats)
        t_ours, c_ours, ours = _best(our_call, args.repeats)
        if name == "forward":  # per batch; the logits agree
            err = float(np.abs(np.asarray(ours) - np.asarray(ref)).max())
            bound = TOL[name] * float(np.abs(np.asarray(ref)).max())
            n, what = 1, f"per batch of {args.batch}, max logit difference {err:.1e}"
        else:
            scaled = np.stack([minmax(resize(minmax(m), (h, w))) for m in ours])  # type: ignore[union-attr]
            err, bound = float(np.abs(scaled - ref).max()), TOL[name]  # type: ignore[operator]
            n, what = args.images, f"max map difference {err:.1e}"
        if not err <= bound:
            disagree.append(f"{name}: {what} over {bound:.1e}")
        print(f"{name:<12} {t_ref / n:>10.2f} ({c_ref / n:>6.2f}) {t_ours / n:>10.2f} "
              f"({c_ours / n:>6.2f}) {t_ref / t_ours:>11.2f}x ({c_ref / c_ours:.2f}x)"
              f"   {what}")  # fmt: skip
    if "scorecam" in args.methods.split(","):
        acts = tap_pass(session, x, TARGET, [session.info.tap(None)], grads=False)[0].taps
        dead = (~next(iter(acts.values())).reshape(len(x), session.tap_channels, -1).any(-1)).sum(1)
        print(f"all-zero tap channels per image (one shared Score-CAM pass): {dead.tolist()}")
    for line in disagree:
        print(f"error: the two sides disagree, {line}", file=sys.stderr)
    return 1 if disagree else 0


if __name__ == "__main__":
    raise SystemExit(main())
