"""The chunk size from the model's memory per row (cli/chunking.py).

Oracles: the tiny CNN's intermediates scale with its input area, so a model at 4x the side
needs about 16x the bytes per row; and a measured run: the peak RSS that one chunk of the
chosen size adds stays within the budget, while a chunk 8x larger adds several times more.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from gradtap.cli.chunking import cached_row_bytes, choose_chunk, row_bytes
from tests.runtime_graphs import tiny_model

MiB = 1 << 20


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("chunk")
    paths = {}
    for side in (16, 64, 256):
        paths[side] = folder / f"tiny{side}.gradtap.onnx"
        onnx.save(tiny_model(size=side), str(paths[side]))
    return paths


def test_a_bigger_model_per_row_gets_a_smaller_chunk(models: dict[int, Path]) -> None:
    small, big = row_bytes(models[16]), row_bytes(models[64])
    # activations and their gradients scale with H x W (16x); the per-row tensors that do not
    # (logits, class seeds, pooled features) are a few hundred bytes, so a little under 16x
    assert 15.0 < big / small <= 16.0
    budget = 2 * MiB
    assert choose_chunk(big, budget) < choose_chunk(small, budget)
    for per_row in (small, big):
        assert (
            choose_chunk(per_row, budget) * per_row <= budget or choose_chunk(per_row, budget) == 1
        )
    assert choose_chunk(budget * 10, budget) == 1  # one row over the budget still runs, alone
    assert choose_chunk(1, budget, largest=32) == 32


def test_the_estimate_is_cached_per_file(models: dict[int, Path], tmp_path: Path) -> None:
    assert cached_row_bytes(models[64], tmp_path) == row_bytes(models[64])
    cache = json.loads((tmp_path / "row-bytes.json").read_text())
    assert list(cache.values()) == [row_bytes(models[64])]
    (tmp_path / "row-bytes.json").write_text(json.dumps({k: 7 for k in cache}))
    assert cached_row_bytes(models[64], tmp_path) == 7  # read back, not computed again


def test_a_file_that_cannot_be_estimated_falls_back_and_fails_as_one_line(tmp_path: Path) -> None:
    from gradtap.cli.chunking import FALLBACK, auto_chunk
    from tests.conftest import invoke

    bad = tmp_path / "bad.gradtap.onnx"
    bad.write_bytes(b"not an onnx file")
    assert auto_chunk(bad) == (FALLBACK, 0)
    (tmp_path / "p.png").write_bytes(b"")
    result = invoke("explain", tmp_path / "p.png", "-M", bad, "-o", tmp_path / "o")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.count("\n") <= 2, result.output


PROBE = """
import sys, numpy as np
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.methods.registry import METHODS
def peak():  # VmHWM: this process's peak RSS (ru_maxrss may carry the forking parent's)
    return int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")).split()[1])
path, rows = sys.argv[1], int(sys.argv[2])
session = ExplainSession(path, threads=1, batch_size=rows)
h, w = session.info.input_size
METHODS["gradcam"](session, np.random.rand(1, 3, h, w).astype(np.float32), None)
before = peak()
x = np.random.rand(rows, 3, h, w).astype(np.float32)
METHODS["gradcam"](session, x, None)
print((peak() - before) * 1024)
"""


def _added_peak(model: Path, rows: int) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, str(model), str(rows)], check=True,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    return int(out.stdout.split()[-1])


def test_peak_memory_of_a_chosen_chunk_stays_within_the_budget(models: dict[int, Path]) -> None:
    budget = 64 * MiB
    per_row = row_bytes(models[256])
    chunk = choose_chunk(per_row, budget)
    assert 4 <= chunk < 32  # the budget, not the cap, decides here
    added = _added_peak(models[256], chunk)
    assert added <= budget  # the estimate bounds what onnxruntime really holds
    assert _added_peak(models[256], 8 * chunk) > 3 * max(added, 4 * MiB)  # and it does grow
