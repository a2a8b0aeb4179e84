"""Where model weights come from: local files, the torch hub cache, or a seeded random init.

Nothing here downloads: a torchvision weights name is used only when its file already lies in
``torch.hub.get_dir()/checkpoints/``; otherwise the error says which file to put where.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradtap.runtime.errors import GradtapError

log = logging.getLogger(__name__)

RANDOM = "random"
RANDOM_SEED = 0
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class WeightsError(GradtapError):
    """Weights could not be used for a model (base class of the errors below)."""


class WeightsNotFoundError(WeightsError):
    """The requested weights are neither a readable file nor a known, locally available name."""


class WeightsMismatchError(WeightsError):
    """A weights file was read but does not fit the model (missing, unexpected or reshaped keys)."""


def looks_like_path(weights: str | Path) -> bool:
    """Whether ``weights`` names a file rather than a weights name such as "random" or "DEFAULT"."""
    text = str(weights)
    return (
        isinstance(weights, Path) or "/" in text or "\\" in text or text.endswith(WEIGHT_SUFFIXES)
    )


def _missing_file(path: str | Path) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"weights file {str(path)!r} does not exist; pass an existing .pth/.pt file, "
        f"a weights name such as 'DEFAULT', or {RANDOM!r}"
    )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file as a dict, without executing pickled code.

    Args:
        path: a ``.pth``/``.pt`` file holding a state dict or a dict with a "state_dict" key.

    Returns:
        The loaded dict.

    Raises:
        WeightsNotFoundError: the file does not exist or cannot be read as a checkpoint.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise _missing_file(path)
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; report them all as one
        raise WeightsNotFoundError(
            f"weights file {str(file)!r} is not a readable torch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no details'})"
        ) from exc
    if not isinstance(loaded, Mapping):
        raise WeightsNotFoundError(
            f"weights file {str(file)!r} holds a {type(loaded).__name__}, expected a state dict "
            "or a dict with a 'state_dict' key"
        )
    return dict(loaded)


def state_dict_of(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: its "state_dict" (or "model") entry, or the dict itself.

    A ``module.`` prefix left by ``nn.DataParallel`` is removed.
    """
    for key in ("state_dict", "model"):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` with strict key and shape checks.

    Raises:
        WeightsMismatchError: naming the first missing, unexpected and mis-shaped keys.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = [
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or reshaped:
        parts = [
            f"{label} {items[:3]}{' ...' if len(items) > 3 else ''} ({len(items)})"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("reshaped", reshaped),
            )
            if items
        ]
        raise WeightsMismatchError(
            f"weights from {source} do not fit {type(model).__name__}: " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)


def hub_checkpoint_dir() -> Path:
    """The folder torch keeps downloaded weights in (never written to by gradtap)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hub_cached_file(url: str, model_name: str, weights_name: str) -> Path:
    """The torch hub cache file for a weights URL, if it is already there.

    Raises:
        WeightsNotFoundError: the file is not in the cache; the message says where to put it.
    """
    filename = url.rsplit("/", 1)[-1]
    file = hub_checkpoint_dir() / filename
    if not file.is_file():
        raise WeightsNotFoundError(
            f"{model_name} weights {weights_name!r} are not in the torch hub cache and gradtap "
            f"never downloads: place {filename} (from {url}) in {hub_checkpoint_dir()}/, or pass "
            f"a local .pth path, or use {RANDOM!r}"
        )
    return file


def seeded_init(factory: Any, *args: Any, **kwargs: Any) -> nn.Module:
    """Build ``factory(*args, **kwargs)`` under a fixed seed, leaving the global RNG untouched.

    BatchNorm affine parameters and running statistics are then drawn from the same seed, so
    that a "random" model has non-trivial normalisation layers (folding them must matter).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model: nn.Module = factory(*args, **kwargs)
        gen = torch.Generator().manual_seed(RANDOM_SEED + 1)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                    n = module.num_features
                    module.weight.copy_(0.5 + 0.5 * torch.rand(n, generator=gen))
                    module.bias.copy_(0.1 * torch.randn(n, generator=gen))
                    module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                    module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return model


def weights_tag(weights: str | Path) -> str:
    """A short file-name-safe tag for a weights choice, used to name cached exports.

    Names are lower-cased ("IMAGENET1K_V1" -> "imagenet1k_v1"); a file gives its stem plus 8 hex
    digits of a hash of its resolved path, size and modification time, so a changed file gets a
    new tag.
    """
    if looks_like_path(weights):
        file = Path(weights).expanduser().resolve()
        if not file.is_file():
            raise _missing_file(weights)
        stat = file.stat()
        key = f"{file}|{stat.st_size}|{stat.st_mtime_ns}".encode()
        stem = re.sub(r"[^A-Za-z0-9_.]+", "_", file.stem)
        return f"{stem}-{hashlib.sha1(key).hexdigest()[:8]}"
    return re.sub(r"[^a-z0-9_]+", "_", str(weights).lower())
