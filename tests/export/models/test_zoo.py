"""Model builders: real EfficientNet-Lite0 predictions, weight sources and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import REPO

torch = pytest.importorskip("torch")

import cv2  # noqa: E402
import skimage.data  # noqa: E402
from torch import nn  # noqa: E402

from gradtap.export.models.efficientnet_lite import same_padding  # noqa: E402
from gradtap.export.models.smallcnn import SmallCNN  # noqa: E402
from gradtap.export.models.weights import (  # noqa: E402
    WeightsMismatchError,
    WeightsNotFoundError,
    hub_checkpoint_dir,
    weights_tag,
)
from gradtap.export.models.zoo import (  # noqa: E402
    MODEL_NAMES,
    ModelSpec,
    UnknownModelError,
    build,
    imagenet_labels,
    pixel_space,
    tap_module,
)

REPO = REPO
ESPRESSO = 967
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def preprocess(image: np.ndarray, spec: ModelSpec) -> torch.Tensor:
    """Shorter side to spec.resize_size, central spec.input_size crop, pixels in [0, 1], NCHW."""
    h, w = image.shape[:2]
    scale = spec.resize_size / min(h, w)
    size = (round(w * scale), round(h * scale))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ch, cw = spec.input_size
    top, left = (resized.shape[0] - ch) // 2, (resized.shape[1] - cw) // 2
    crop = resized[top : top + ch, left : left + cw].astype(np.float32) / 255.0
    return torch.from_numpy(crop.transpose(2, 0, 1)[None].copy())


def params_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def lite0() -> tuple[nn.Module, ModelSpec]:
    return build("efficientnet_lite0", "DEFAULT")


@pytest.mark.parametrize(
    ("photo", "expected"), [("coffee", range(ESPRESSO, ESPRESSO + 1)), ("chelsea", CAT_CLASSES)]
)
def test_efficientnet_lite0_classifies_real_photos(lite0, photo: str, expected: range) -> None:
    model, spec = lite0
    x = preprocess(getattr(skimage.data, photo)(), spec)
    with torch.no_grad():
        top1 = int(pixel_space(model, spec)(x).argmax(1))
    assert top1 in expected, f"{photo}: top-1 {top1} ({spec.labels[top1]})"


def test_efficientnet_lite0_normalisation_is_tf_convention(lite0) -> None:
    _, spec = lite0
    pixels = torch.tensor([0.0, 127.0, 255.0]).view(1, 3, 1, 1).expand(1, 3, 1, 3) / 255.0
    normalised = pixel_space(nn.Identity(), spec)(pixels.contiguous())
    expected = (pixels * 255.0 - 127.0) / 128.0
    torch.testing.assert_close(normalised, expected, rtol=0, atol=1e-6)


def test_efficientnet_lite0_head_tap_is_7x7(lite0) -> None:
    model, spec = lite0
    seen = []
    handle = tap_module(model, spec).register_forward_hook(lambda _m, _i, o: seen.append(o))
    with torch.no_grad():
        model(torch.zeros(1, 3, *spec.input_size))
    handle.remove()
    assert spec.tap_alias == "head" and seen[0].shape == (1, 1280, 7, 7)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [
        (224, 3, 2, (0, 1)),
        (56, 5, 2, (1, 2)),
        (14, 5, 1, (2, 2)),
        (7, 3, 1, (1, 1)),
        (7, 1, 1, (0, 0)),
    ],
)
def test_same_padding_matches_tensorflow(size: int, kernel: int, stride: int, pads) -> None:
    # TF "SAME": output ceil(size / stride), total pad split with the extra pixel after.
    assert same_padding(size, kernel, stride) == pads


def test_efficientnet_strict_loading_names_missing_key(tmp_path: Path, lite0) -> None:
    model, _ = lite0
    state = model.state_dict()
    del state["_blocks.3._bn1.running_var"]
    file = tmp_path / "partial.pth"
    torch.save(state, file)
    with pytest.raises(WeightsMismatchError, match=r"missing \['_blocks.3._bn1.running_var'\]"):
        build("efficientnet_lite0", file)


def test_imagenet_labels_are_distinct_names() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert labels[ESPRESSO] == "espresso"
    assert labels[281] == "tabby cat"
    assert (labels[657], labels[744]) == ("missile", "projectile")


@pytest.mark.parametrize("name", ["smallcnn", "resnet18", "efficientnet_lite0"])
def test_random_init_is_deterministic_and_keeps_global_rng(name: str) -> None:
    before = torch.get_rng_state()
    a, _ = build(name)
    b, _ = build(name)
    assert torch.equal(torch.get_rng_state(), before)
    assert params_equal(a, b)
    bns = [m for m in a.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not torch.all(m.running_var == 1) for m in bns), "BatchNorm left at identity"
    assert not a.training


def test_unknown_model_lists_names() -> None:
    with pytest.raises(UnknownModelError) as err:
        build("alexnet")
    assert all(name in str(err.value) for name in MODEL_NAMES)


def test_missing_weights_file_says_how_to_supply(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "resnet18.pth"
    with pytest.raises(WeightsNotFoundError) as err:
        build("resnet18", missing)
    message = str(err.value)
    assert str(missing) in message and "'random'" in message and "\n" not in message


def test_unreadable_weights_file(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsNotFoundError, match="not a readable torch checkpoint"):
        build("resnet18", bad)


def test_unknown_weights_name_lists_valid_names() -> None:
    with pytest.raises(WeightsNotFoundError) as err:
        build("resnet50", "IMAGENET1K_V9")
    assert all(n in str(err.value) for n in ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"))
    with pytest.raises(WeightsNotFoundError, match="'random'"):
        build("smallcnn", "DEFAULT")


@pytest.fixture
def hub_dir(tmp_path: Path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_hub_weights_absent_says_which_file_where(hub_dir: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as err:
        build("resnet18", "IMAGENET1K_V1")
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and str(hub_dir / "checkpoints") in message


def test_hub_weights_present_are_loaded_without_download(hub_dir: Path) -> None:
    source = _perturbed(build("resnet18")[0])
    hub_checkpoint_dir().mkdir(parents=True)
    torch.save(source.state_dict(), hub_checkpoint_dir() / "resnet18-f37072fd.pth")
    model, spec = build("resnet18", "DEFAULT")
    assert params_equal(model, source)
    assert spec.weights.startswith("IMAGENET1K_V1") and spec.num_classes == 1000


def _perturbed(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    return model


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "dataparallel"])
def test_local_weights_file_formats(tmp_path: Path, wrap: str) -> None:
    source = _perturbed(build("resnet18")[0])
    state = source.state_dict()
    payload = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "dataparallel": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    torch.save(payload, tmp_path / "r18.pth")
    model, spec = build("resnet18", tmp_path / "r18.pth")
    assert params_equal(model, source) and spec.weights == "r18.pth"


def test_fine_tuned_head_sets_classes_and_labels(tmp_path: Path) -> None:
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "ft.pth")
    _, spec = build("resnet18", tmp_path / "ft.pth")
    assert spec.labels == ("class_0", "class_1", "class_2")
    _, spec = build("resnet18", tmp_path / "ft.pth", labels=["a", "b", "c"])
    assert spec.labels == ("a", "b", "c")
    with pytest.raises(ValueError, match="3 classes but 2 labels"):
        build("resnet18", tmp_path / "ft.pth", labels=["a", "b"])


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    torch.save(SmallCNN(5).state_dict(), tmp_path / "small.pth")
    with pytest.raises(WeightsMismatchError, match="do not fit ResNet.*missing"):
        build("resnet18", tmp_path / "small.pth")


def test_smallcnn_trainer_checkpoint(tmp_path: Path) -> None:
    source = SmallCNN(4, width=8).eval()
    labels = ["disc", "square", "triangle", "cross"]
    ckpt = {"state_dict": source.state_dict(), "labels": labels, "width": 8, "input_size": 64}
    torch.save({**ckpt, "accuracy": 0.97, "dataset": "synthetic"}, tmp_path / "small.pt")
    model, spec = build("smallcnn", tmp_path / "small.pt")
    assert params_equal(model, source)
    assert spec.labels == tuple(labels) and spec.input_size == (64, 64)
    assert "accuracy=0.97" in spec.weights and spec.tap_module == "features"


def test_smallcnn_random_labels() -> None:
    _, spec = build("smallcnn", labels=["cat", "dog"])
    model, _ = build("smallcnn", labels=["cat", "dog"])
    assert spec.labels == ("cat", "dog") and model.fc.out_features == 2
    assert spec.input_size == (128, 128)


def test_shipped_smallcnn_checkpoint_loads() -> None:
    model, spec = build("smallcnn", REPO / "models" / "smallcnn.pt")
    with torch.no_grad():
        logits = pixel_space(model, spec)(torch.rand(2, 3, *spec.input_size))
    assert logits.shape == (2, spec.num_classes) and torch.isfinite(logits).all()


def test_weights_tag(tmp_path: Path) -> None:
    assert weights_tag("IMAGENET1K_V1") == "imagenet1k_v1" and weights_tag("random") == "random"
    file = tmp_path / "my weights.pth"
    file.write_bytes(b"x")
    tag = weights_tag(file)
    assert tag.startswith("my_weights-") and len(tag) == len("my_weights-") + 8
    file.write_bytes(b"xy")
    assert weights_tag(file) != tag
    with pytest.raises(WeightsNotFoundError):
        weights_tag(tmp_path / "absent.pth")
