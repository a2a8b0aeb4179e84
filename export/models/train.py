"""Train the custom CNN on the synthetic dataset or on an ImageFolder directory (torch).

The network sees RGB pixels in [0, 1] normalised with ``SMALLCNN_MEAN``/``SMALLCNN_STD`` in
front of it, exactly what the exported graph does in-graph. The checkpoint is a plain dict
``{"state_dict", "labels", "width", "input_size", "accuracy", "dataset"}`` whose state dict
loads strictly into ``SmallCNN(len(labels), width)``.

    python -m gradtap.export.models.train --synthetic --out models/smallcnn.pt
    python -m gradtap.export.models.train --folder data/cats_vs_dogs --size 96 --out cats_dogs.pt
    python -m gradtap.export.models.train --synthetic --adv-eps 0.03137 --out models/smallcnn_robust.pt

With ``--adv-eps`` the network is trained adversarially (Madry et al. 2018,
https://arxiv.org/abs/1706.06083): every batch is replaced by its projected-gradient-descent
attack, L-inf radius ``eps`` in [0, 1] pixel units, ``adv_steps`` signed-gradient steps of
``adv_step`` from a uniformly random start inside the ball, clipped to valid pixels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from gradtap.export.models.smallcnn import SMALLCNN_MEAN, SMALLCNN_STD, SmallCNN
from gradtap.runtime.errors import ImageError, OptionError
from gradtap.runtime.evaluate import synthetic

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
CHECKPOINT_KEYS = frozenset({"state_dict", "labels", "width", "input_size", "accuracy", "dataset"})
"""Keys every checkpoint has; adversarially trained ones add ``"adversarial"`` (the PGD settings
and the PGD-attacked held-out accuracy)."""


@dataclass(frozen=True)
class Dataset:
    """Images as uint8 [N, H, W, 3] RGB, integer labels [N], class names and a description."""

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    names: tuple[str, ...]
    description: str

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; ``flips`` adds random flips (and 90-degree turns when ``turns``)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    flips: bool = True
    turns: bool = True
    adv_eps: float = 0.0
    adv_steps: int = 3
    adv_step: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.adv_eps < 1.0:
            raise OptionError(f"adversarial eps must be in [0, 1) pixel units, got {self.adv_eps}")
        if self.adv_steps < 1:
            raise OptionError(f"adversarial steps must be >= 1, got {self.adv_steps}")

    @property
    def attack(self) -> PGD | None:
        """The training attack, or ``None`` for standard training."""
        if self.adv_eps == 0.0:
            return None
        return PGD(self.adv_eps, self.adv_steps, self.adv_step, random_start=True)


@dataclass(frozen=True)
class PGD:
    """Projected gradient descent in the L-inf ball of radius ``eps`` (pixels in [0, 1]).

    Each of ``steps`` steps moves by ``step`` (default ``2.5 * eps / steps``, Madry et al.'s
    ratio) along the sign of the loss gradient, then projects back into the ball and [0, 1].
    """

    eps: float
    steps: int = 10
    step: float | None = None
    random_start: bool = True

    def __call__(
        self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """Adversarial images for pixels ``x`` [N, 3, H, W] in [0, 1] and labels ``y``."""
        step = self.step if self.step is not None else 2.5 * self.eps / self.steps
        adv = x.clone()
        if self.random_start:
            noise = torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2.0 - 1.0
            adv = (x + self.eps * noise).clamp_(0.0, 1.0)
        for _ in range(self.steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(normalize(adv)), y)
            (grad,) = torch.autograd.grad(loss, adv)
            with torch.no_grad():
                adv = adv + step * grad.sign()
                adv = torch.min(torch.max(adv, x - self.eps), x + self.eps).clamp_(0.0, 1.0)
        return adv.detach()


@dataclass(frozen=True)
class EpochStats:
    """What one epoch did: mean training loss and accuracy, held-out accuracy, seconds taken."""

    epoch: int
    epochs: int
    loss: float
    train_accuracy: float
    test_accuracy: float
    seconds: float

    def line(self) -> str:
        return (
            f"epoch {self.epoch}/{self.epochs}  loss {self.loss:.4f}  "
            f"train acc {self.train_accuracy:.4f}  held-out acc {self.test_accuracy:.4f}  "
            f"({self.seconds:.1f} s)"
        )


def synthetic_dataset(n: int, seed: int, size: int) -> Dataset:
    """``n`` samples of the synthetic split ``seed`` at ``size`` pixels, generated in chunks."""
    chunks = [
        synthetic.as_uint8(synthetic.make_split(min(1000, n - i), seed, size, start=i).images)
        for i in range(0, n, 1000)
    ]
    labels = np.arange(n, dtype=np.int64) % len(synthetic.CLASS_NAMES)
    return Dataset(
        np.concatenate(chunks), labels, synthetic.CLASS_NAMES, f"synthetic(seed={seed}, n={n})"
    )


def _read_square(path: Path, size: int) -> npt.NDArray[np.uint8]:
    """Read an image as RGB, resize its shorter side to ``size`` and centre-crop a square."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f"cannot decode image file {path}")
    h, w = bgr.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    bgr = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_AREA)
    top, left = (nh - size) // 2, (nw - size) // 2
    return bgr[top : top + size, left : left + size, ::-1].copy()


def image_folder_dataset(root: Path, size: int) -> Dataset:
    """Load an ImageFolder tree ``root/<class>/<image>``; classes are sorted folder names.

    Args:
        root: folder with one sub-folder per class.
        size: side of the square crops fed to the network.

    Returns:
        Every readable image of every class.
    """
    root = Path(root)
    if not root.is_dir():
        raise OptionError(f"ImageFolder root {root} is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {c: sorted(_images_in(root / c)) for c in classes}
    classes = [c for c in classes if files[c]]
    if len(classes) < 2:
        raise OptionError(
            f"ImageFolder root {root} needs at least 2 class folders holding images "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}); found {classes or 'none'}"
        )
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in files[name]:
            images.append(_read_square(path, size))
            labels.append(label)
    logger.info("read %d images of %d classes from %s", len(images), len(classes), root)
    return Dataset(np.stack(images), np.array(labels, np.int64), tuple(classes), f"folder:{root}")


def _images_in(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]


def split_holdout(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split off a stratified held-out part: ``fraction`` of each class, chosen with ``seed``."""
    if not 0.0 < fraction < 1.0:
        raise OptionError(f"held-out fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = np.zeros(len(data), bool)
    for label in range(len(data.names)):
        idx = rng.permutation(np.flatnonzero(data.labels == label))
        held[idx[: max(1, round(fraction * len(idx)))]] = True
    if held.all():
        raise OptionError(f"dataset {data.description} is too small to hold out {fraction}")
    part = lambda keep, tag: Dataset(  # noqa: E731
        data.images[keep], data.labels[keep], data.names, f"{data.description}[{tag}]"
    )
    return part(~held, "train"), part(held, "held-out")


def to_input(images: npt.NDArray[np.uint8]) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] pixels in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Apply the custom CNN's input normalisation (the exported graph does this in-graph)."""
    mean = torch.tensor(SMALLCNN_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(SMALLCNN_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _augment(x: torch.Tensor, config: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    if config.flips:
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    if config.turns and x.shape[2] == x.shape[3]:
        k = int(torch.randint(4, (1,), generator=gen))
        x = torch.rot90(x, k, dims=(2, 3))
    return x


def init_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """He-normal conv/linear weights and zero biases (the net has no normalisation layers)."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = module.weight[0].numel()
            with torch.no_grad():
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=gen)
                module.bias.zero_()
    return model


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``data``."""
    model.eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        logits = model(normalize(to_input(data.images[i : i + batch_size])))
        correct += int((logits.argmax(1).numpy() == data.labels[i : i + batch_size]).sum())
    return correct / len(data)


def attacked_accuracy(
    model: torch.nn.Module, data: Dataset, attack: PGD, *, seed: int = 0, batch_size: int = 256
) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``data`` attacked by ``attack`` per image."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for i in range(0, len(data), batch_size):
        y = torch.from_numpy(data.labels[i : i + batch_size])
        adv = attack(model, to_input(data.images[i : i + batch_size]), y, gen)
        with torch.no_grad():
            correct += int((model(normalize(adv)).argmax(1) == y).sum())
    return correct / len(data)


def train(
    model: torch.nn.Module,
    train_data: Dataset,
    test_data: Dataset,
    config: TrainConfig = TrainConfig(),
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> list[EpochStats]:
    """Train ``model`` with AdamW and a one-cycle schedule; report after every epoch.

    With ``config.adv_eps > 0`` every batch is first replaced by its PGD attack (adversarial
    training); the reported training accuracy is then the accuracy on the attacked batches.

    Args:
        model: a network taking normalised NCHW input.
        train_data: training images and labels.
        test_data: held-out images and labels (only measured, never trained on).
        config: optimisation settings.
        on_epoch: called with each epoch's statistics (e.g. to print a progress line).

    Returns:
        The statistics of every epoch; the last one holds the final held-out accuracy.
    """
    if len(train_data) < config.batch_size:
        raise OptionError(
            f"training set has {len(train_data)} samples, fewer than one batch "
            f"(batch_size={config.batch_size})"
        )
    gen = torch.Generator().manual_seed(config.seed)
    steps = len(train_data) // config.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=steps * config.epochs, pct_start=0.15
    )
    history, attack = [], config.attack
    for epoch in range(1, config.epochs + 1):
        start, model = time.perf_counter(), model.train()
        order = torch.randperm(len(train_data), generator=gen).numpy()
        loss_sum, hits = 0.0, 0
        for step in range(steps):
            idx = np.sort(order[step * config.batch_size : (step + 1) * config.batch_size])
            x = _augment(to_input(train_data.images[idx]), config, gen)
            y = torch.from_numpy(train_data.labels[idx])
            if attack is not None:
                x = attack(model.eval(), x, y, gen)
                model.train()
            logits = model(normalize(x))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            hits += int((logits.argmax(1) == y).sum())
        seen = steps * config.batch_size
        stats = EpochStats(
            epoch,
            config.epochs,
            loss_sum / seen,
            hits / seen,
            accuracy(model, test_data),
            time.perf_counter() - start,
        )
        history.append(stats)
        logger.info(stats.line())
        if on_epoch is not None:
            on_epoch(stats)
    return history


def save_checkpoint(
    path: Path,
    model: SmallCNN,
    *,
    labels: tuple[str, ...] | list[str],
    width: int,
    input_size: int,
    accuracy: float,
    dataset: str,
    adversarial: dict | None = None,
) -> None:
    """Write the checkpoint dict that ``gradtap.export.models.zoo.build("smallcnn", ...)`` loads.

    ``adversarial`` (adversarially trained models) records the training attack and the
    PGD-attacked held-out accuracy, e.g. ``{"eps": 0.03, "steps": 3, "attacked_accuracy": 0.9}``.
    """
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    ckpt = {
        "state_dict": state,
        "labels": list(labels),
        "width": int(width),
        "pools": int(getattr(model, "pools", 2)),
        "input_size": int(input_size),
        "accuracy": float(accuracy),
        "dataset": str(dataset),
    }
    if adversarial is not None:
        ckpt["adversarial"] = dict(adversarial)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)


def load_checkpoint(path: Path) -> tuple[SmallCNN, dict]:
    """Load a checkpoint written by ``save_checkpoint`` into a ``SmallCNN`` (strict, eval mode)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    missing = CHECKPOINT_KEYS - set(ckpt) if isinstance(ckpt, dict) else CHECKPOINT_KEYS
    if missing:
        raise OptionError(f"{path} is not a SmallCNN checkpoint: missing keys {sorted(missing)}")
    model = SmallCNN(len(ckpt["labels"]), ckpt["width"], ckpt.get("pools", 2))
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.eval(), ckpt


def with_pools(model: SmallCNN, pools: int) -> SmallCNN:
    """The same weights in a ``SmallCNN`` with ``pools`` max-pools (pooling has no weights;
    only the layer indices shift), e.g. to fine-tune a finer-tap model from a trained one."""
    new = SmallCNN(model.fc.out_features, model.features[0].out_channels, pools)
    old = model.state_dict()
    if [v.shape for v in old.values()] != [v.shape for v in new.state_dict().values()]:
        raise OptionError("the two SmallCNN variants have different parameter shapes")
    new.load_state_dict(dict(zip(new.state_dict(), old.values(), strict=True)), strict=True)
    return new.train(model.training)


def _datasets(
    synthetic_set: bool, folder: Path | None, size: int, n_train: int, n_test: int, holdout: float
) -> tuple[Dataset, Dataset]:
    if synthetic_set == (folder is not None):
        raise click.UsageError("give exactly one of --synthetic or --folder DIR")
    if folder is not None:
        return split_holdout(image_folder_dataset(folder, size), holdout, seed=0)
    train_data = synthetic_dataset(n_train, synthetic.TRAIN_SEED, size)
    return train_data, synthetic_dataset(n_test, synthetic.TEST_SEED, size)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--synthetic", "synthetic_set", is_flag=True, help="Train on the synthetic shapes.")
@click.option(
    "--folder",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Train on an ImageFolder tree root/<class>/<image>.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--size", default=synthetic.DEFAULT_SIZE, show_default=True, help="Input side.")
@click.option("--width", default=16, show_default=True, help="SmallCNN width (first block).")
@click.option(
    "--pools",
    type=click.IntRange(0, 2),
    help="Max-pools (the tap has 1 / 2**pools of the input side) [default: 2, or the --init "
    "checkpoint's; a different count re-uses its weights, which do not depend on the pools].",
)
@click.option("--epochs", default=TrainConfig.epochs, show_default=True)
@click.option("--batch-size", default=TrainConfig.batch_size, show_default=True)
@click.option("--lr", default=TrainConfig.lr, show_default=True, help="Peak learning rate.")
@click.option("--seed", default=0, show_default=True, help="Initialisation and shuffling seed.")
@click.option("--train-samples", default=12000, show_default=True, help="Synthetic only.")
@click.option("--test-samples", default=2000, show_default=True, help="Synthetic only.")
@click.option("--holdout", default=0.2, show_default=True, help="Folder only: held-out share.")
@click.option(
    "--adv-eps",
    default=0.0,
    show_default=True,
    help="Adversarial training: PGD L-inf radius in [0, 1] pixel units (0 = standard training).",
)
@click.option("--adv-steps", default=TrainConfig.adv_steps, show_default=True, help="PGD steps.")
@click.option("--adv-step", type=float, help="PGD step size [default: 2.5 * eps / steps].")
@click.option(
    "--attack-steps",
    default=10,
    show_default=True,
    help="PGD steps of the held-out attack measured after adversarial training.",
)
@click.option(
    "--init",
    "init_from",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Start from this checkpoint's weights (e.g. adversarial fine-tuning of a trained model).",
)
@click.option("--threads", default=2, show_default=True, help="torch intra-op threads.")
def main(
    synthetic_set: bool,
    folder: Path | None,
    out: Path,
    size: int,
    width: int,
    pools: int | None,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    train_samples: int,
    test_samples: int,
    holdout: float,
    adv_eps: float,
    adv_steps: int,
    adv_step: float | None,
    attack_steps: int,
    init_from: Path | None,
    threads: int,
) -> None:
    """Train the custom CNN and save a checkpoint, e.g. --synthetic --out models/smallcnn.pt."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    try:
        args = (synthetic_set, folder, size, train_samples, test_samples, holdout)
        train_data, test_data = _datasets(*args)
        config = TrainConfig(
            epochs,
            batch_size,
            lr,
            seed=seed,
            turns=folder is None,
            adv_eps=adv_eps,
            adv_steps=adv_steps,
            adv_step=adv_step,
        )
        if init_from is not None:
            model, start = load_checkpoint(init_from)
            if list(start["labels"]) != list(train_data.names):
                raise OptionError(f"{init_from} has classes {start['labels']}, not the data's")
            width = start["width"]
            if pools is not None and pools != model.pools:
                model = with_pools(model, pools)
        else:
            pools = 2 if pools is None else pools
            model = init_weights(SmallCNN(len(train_data.names), width, pools), seed)
        click.echo(f"train {train_data.description}, held out {test_data.description}", err=True)
        history = train(model, train_data, test_data, config, lambda s: click.echo(s.line()))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    acc = history[-1].test_accuracy
    dataset = "synthetic" if folder is None else f"folder:{folder.name}"
    adversarial = None
    if config.attack is not None:
        attack = PGD(adv_eps, attack_steps)
        robust = attacked_accuracy(model, test_data, attack, seed=seed)
        adversarial = {
            "eps": adv_eps,
            "steps": adv_steps,
            "step": adv_step if adv_step is not None else 2.5 * adv_eps / adv_steps,
            "attack_steps": attack_steps,
            "attacked_accuracy": robust,
        }
        click.echo(f"PGD-{attack_steps} (eps {adv_eps:.4g}) held-out accuracy {robust:.4f}")
    save_checkpoint(
        out,
        model,
        labels=train_data.names,
        width=width,
        input_size=size,
        accuracy=acc,
        dataset=dataset,
        adversarial=adversarial,
    )
    click.echo(f"held-out accuracy {acc:.4f} on {len(test_data)} images; wrote {out}")


if __name__ == "__main__":
    main()
