"""Cold start: one image explained by a fresh process, the gradtap CLI against a captum script.

Both sides read the same JPEG, resize it (shorter side 256, centre crop 224), take the predicted
class and write its saliency map as ``.npy``. Wall time and peak RSS come from ``os.wait4`` on
each child. Every command runs once untimed first, so both read their files from the page cache.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CAPTUM_SCRIPT = """
import sys
import numpy as np
import torch
import torchvision
from captum.attr import Saliency
from PIL import Image
from torchvision.transforms import functional as TF

weights, image, out, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
net = getattr(torchvision.models, sys.argv[5])()
net.load_state_dict(torch.load(weights))
norm = torchvision.transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
model = torch.nn.Sequential(norm, net).eval()
img = TF.center_crop(TF.resize(Image.open(image).convert("RGB"), 256), 224)
x = TF.to_tensor(img)[None]
with torch.no_grad():
    target = int(model(x).argmax())
attr = Saliency(model).attribute(x, target=target)
np.save(out, attr[0].amax(0).numpy())
"""
IMPORT_TORCH = "import torch, torchvision, captum"
IMPORT_GRADTAP = "import gradtap.runtime, gradtap.cli.main"


@dataclass(frozen=True)
class Run:
    """Median wall seconds and peak RSS (MiB) of one command over repeats."""

    label: str
    wall_s: float
    peak_rss_mb: float
    runs: int


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process; raises if it fails."""
    t0 = time.perf_counter()
    pid = os.posix_spawn(cmd[0], cmd, dict(os.environ))
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {os.waitstatus_to_exitcode(status)}")
    return wall, usage.ru_maxrss / 1024


def repeat(label: str, cmd: list[str], runs: int) -> Run:
    """One untimed run, then ``runs`` timed ones."""
    timed(cmd)
    results = [timed(cmd) for _ in range(runs)]
    walls = [w for w, _ in results]
    return Run(label, statistics.median(walls), max(r for _, r in results), runs)


def gradtap_command() -> list[str]:
    """The installed ``gradtap`` console script, else ``python -m gradtap.cli``."""
    script = Path(sys.executable).with_name("gradtap")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "gradtap.cli"]


def measure(
    graph: Path, state_dict: Path, arch: str, photo: Path, *, threads: int, runs: int
) -> list[Run]:
    """Cold starts of the CLI and the captum script, and of their imports alone.

    Run it from a small process: a child's peak RSS starts at its parent's RSS at spawn time.
    """
    with tempfile.TemporaryDirectory(prefix="gradtap-bench-") as tmp:
        folder = Path(tmp)
        script = folder / "captum_saliency.py"
        script.write_text(CAPTUM_SCRIPT)
        cli = [*gradtap_command(), "-q", "--threads", str(threads), "explain", str(photo)]
        cli += ["-M", str(graph), "-m", "saliency", "--format", "npy"]
        cli += ["-o", str(folder / "out"), "--overwrite"]
        captum = [sys.executable, str(script), str(state_dict), str(photo)]
        captum += [str(folder / "captum.npy"), str(threads), arch]
        return [
            repeat("gradtap CLI: explain -m saliency", cli, runs),
            repeat("captum script: Saliency", captum, runs),
            repeat(f"import only: {IMPORT_GRADTAP}", [sys.executable, "-c", IMPORT_GRADTAP], runs),
            repeat(f"import only: {IMPORT_TORCH}", [sys.executable, "-c", IMPORT_TORCH], runs),
        ]
