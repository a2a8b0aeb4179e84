"""The chunk size of ``gradtap explain`` when ``-b`` is not given: what the model's memory per
row lets fit in the memory budget (``--max-memory``, default an eighth of this machine's).

The memory per row is estimated from the graph: shape inference gives every intermediate
tensor's shape, and the tensors with a batch axis add up their bytes per row (forward
activations, the backward pass's gradients, the taps). onnxruntime frees and reuses buffers, so
this is an upper estimate of what one more row costs, which is what a budget wants. It is
computed once per model file and kept in the cache folder (the graph is only read again when
the file changes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from gradtap.runtime.image.read import max_memory

MAX_AUTO = 32
"""The largest chunk chosen: beyond it onnxruntime's CPU kernels gain nothing per image."""
CACHE_FILE = "row-bytes.json"
FALLBACK = 8
"""The chunk when the graph cannot be estimated."""
OVERHEAD = 2.0
"""What a row really adds over the estimate: the input batch, the fetched maps and
onnxruntime's arena rounding (measured: 1.3-1.6x the estimate for the tiny CNN at 256 px,
tests/cli/test_chunking.py)."""


def row_bytes(path: str | Path) -> int:
    """Bytes of the graph's intermediate tensors per batch row (at least 1)."""
    import numpy as np
    import onnx
    from onnx import helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    total = 0
    for vi in [*model.graph.value_info, *model.graph.output]:
        tensor = vi.type.tensor_type
        dims = list(tensor.shape.dim)
        if not dims or dims[0].HasField("dim_value"):  # no batch axis: the same for any chunk
            continue
        rest = [d.dim_value if d.HasField("dim_value") else None for d in dims[1:]]
        if None in rest:  # a shape only known at run time: not counted
            continue
        total += (
            math.prod(rest) * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
        )
    return max(1, total)


def cached_row_bytes(path: str | Path, cache: Path | None = None) -> int:
    """:func:`row_bytes`, remembered per file (path, size, modification time) in ``cache``."""
    from gradtap.runtime.catalog import default_cache_dir

    file = Path(path).resolve()
    stat = file.stat()
    key = f"{file}|{stat.st_size}|{stat.st_mtime_ns}"
    where = (cache or default_cache_dir()) / CACHE_FILE
    try:
        known = json.loads(where.read_text("utf-8"))
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), int):
        return known[key]
    found = row_bytes(file)
    known = (
        {k: v for k, v in known.items() if not k.startswith(f"{file}|")}
        if isinstance(known, dict)
        else {}
    )
    known[key] = found
    try:
        from gradtap.runtime.atomic import write_bytes

        where.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(where, json.dumps(known, indent=1).encode("utf-8"))
    except OSError:  # a read-only cache: estimate again next time
        pass
    return found


def choose_chunk(per_row: int, budget: int | None = None, largest: int = MAX_AUTO) -> int:
    """The most rows whose intermediates (times :data:`OVERHEAD`) fit in ``budget`` bytes,
    between 1 and ``largest``."""
    budget = max_memory() if budget is None else budget
    return max(1, min(largest, int(budget // (OVERHEAD * max(1, per_row)))))


def auto_chunk(path: str | Path, budget: int | None = None) -> tuple[int, int]:
    """The chunk size for the model at ``path`` and its estimated bytes per row."""
    try:
        per_row = cached_row_bytes(path)
    except Exception:  # noqa: BLE001 - an estimate that fails must not fail the job
        # (not an ONNX file, a graph shape inference rejects): the session reports a bad file
        # as one line, and a good one runs at the default chunk
        return FALLBACK, 0
    return choose_chunk(per_row, budget), per_row
