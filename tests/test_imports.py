"""The runtime, the CLI and the augmentation pass never import torch (checked in a fresh process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import sys

    class NoTorch:  # behave as if torch were not installed at all
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "torchvision"}:
                raise ImportError(f"{name} is blocked in this check")
            return None

    sys.meta_path.insert(0, NoTorch())
    import gradtap.runtime, gradtap.cli.main
    from gradtap.export.graph.augment import augment
    from tests.graphs import tiny_cnn

    augment(tiny_cnn())
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "torchvision"})
    print("LOADED", loaded)
    """
)


def test_runtime_cli_and_augment_run_without_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout


RUNTIME_ALONE = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    class NoExport:  # the runtime must install and run without the export code
        def find_spec(self, name, path=None, target=None):
            if name == "gradtap.export" or name.startswith("gradtap.export."):
                raise ImportError(f"{name} is blocked in this check")
            return None

    sys.meta_path.insert(0, NoExport())
    import gradtap.runtime

    names = [m.name for m in pkgutil.walk_packages(gradtap.runtime.__path__, "gradtap.runtime.")]
    for name in names:
        importlib.import_module(name)
    print("MODULES", len(names))
    print("LOADED", sorted(m for m in sys.modules if m.startswith("gradtap.export")))
    """
)


def test_no_runtime_module_imports_the_export_package() -> None:
    done = subprocess.run(
        [sys.executable, "-c", RUNTIME_ALONE], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
    assert int(done.stdout.split("MODULES ")[1].split()[0]) > 30  # every module was imported
