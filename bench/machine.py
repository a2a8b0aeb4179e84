"""What the numbers were measured on: CPU, cores, load, library versions."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import time

VERSIONS = ("onnxruntime", "numpy", "torch", "torchvision", "captum", "grad-cam")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's processor string)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load() -> str:
    """The 1/5/15-minute load averages."""
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def versions() -> str:
    """Installed versions of the libraries compared."""
    found = []
    for name in VERSIONS:
        try:
            found.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def summary() -> list[str]:
    """Markdown bullet lines describing the machine now."""
    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; Python {platform.python_version()}",
        f"- versions: {versions()}",
    ]
