"""What the embedding-example tests share: the tools `make setup` installs, photos, the reference.

The reference is the Python runtime (gradtap.runtime) on the shipped explanation graph: Grad-CAM
at tap resolution, guided backprop and LRP (the EpsilonPlus composite, whose walk the shipped
graph carries) at input resolution, for the predicted class.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import skimage.data
from PIL import Image

from gradtap.runtime.image.geometry import to_input
from gradtap.runtime.methods.cam import gradcam
from gradtap.runtime.methods.gradient import guided_backprop
from gradtap.runtime.methods.lrp import lrp
from gradtap.runtime.session import ExplainSession

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "smallcnn.gradtap.onnx"
NPM = ROOT / "build" / "npm" / "node_modules"
ORT_DIR = ROOT / "build" / "ort"
Array = npt.NDArray[np.float32]

# The Python reference: predicted class, Grad-CAM map [h, w] and guided backprop [3, H, W].


@dataclass(frozen=True)
class Reference:
    x: Array
    target: int
    gradcam: Array
    guided: Array
    lrp: Array


def need(path: Path | str, what: str) -> None:
    """Fail (never skip) when a piece `make setup` installs is missing."""
    found = Path(path).exists() if isinstance(path, Path) else shutil.which(path) is not None
    assert found, f"{what} missing ({path}): run `make setup`"


def photos(folder: Path) -> dict[str, Path]:
    """Two real photos from skimage.data, both resized by fractional factors and cropped: a PNG
    whose crop offset is a half pixel (16.5: rounded to even, 16) and a JPEG."""
    out = {"astronaut": folder / "astronaut.png", "coffee": folder / "coffee.jpg"}
    Image.fromarray(skimage.data.astronaut()[:336]).save(out["astronaut"])  # 336 x 512
    Image.fromarray(skimage.data.coffee()).save(out["coffee"], quality=95)
    return out


def reference(session: ExplainSession, image: Path) -> Reference:
    x, _ = to_input(image, session.info)
    cam = gradcam(session, x)
    relevance = lrp(session, x, lrp_rule="epsilon_plus")
    assert relevance.target[0] == cam.target[0]
    return Reference(
        x, int(cam.target[0]), cam.maps[0], guided_backprop(session, x).maps[0], relevance.maps[0]
    )


def flat_variant(folder: Path, *flags: str) -> Path:
    """The shipped model's flat variant: its forward graph (torch export of the shipped weights)
    through `gradtap augment --flat` (and ``flags``)."""
    from click.testing import CliRunner

    from gradtap.cli.main import cli
    from gradtap.export.models import to_onnx

    forward, flat = folder / "forward.onnx", folder / "flat.onnx"
    to_onnx.export_forward("smallcnn", forward, weights=str(MODEL.with_name("smallcnn.pt")))
    result = CliRunner().invoke(
        cli, ["augment", str(forward), "--flat", *flags, "-o", str(flat), "--overwrite"]
    )
    assert result.exit_code == 0, result.output
    return flat


def correlation(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def relative_l2(got: npt.ArrayLike, want: npt.ArrayLike) -> float:
    want = np.asarray(want, np.float64)
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done
