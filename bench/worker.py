"""One benchmark side in its own process, driven by JSON lines on stdin/stdout.

``python -m bench.worker LIBRARY MODEL WEIGHTS THREADS [GRAPH]``; requests:
``{"cmd": "run", "method": ..., "batch": ..., "repeats": ..., "budget_s": ..., "min_s": ...}``
answers
``{"ok": true, "timing": {...}}`` or ``{"ok": false, "error": "..."}``;
``{"cmd": "logits", "batch": N}`` answers the logits of the benchmark images;
``{"cmd": "quit"}`` answers the process's peak RSS and whether torch was imported.
Library output is sent to stderr so stdout carries only the protocol.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any, Protocol, TextIO

import numpy as np
import numpy.typing as npt

from bench import config as cfg
from bench.timing import measure

Array = npt.NDArray[np.float32]


class Side(Protocol):
    """What a side offers the worker."""

    input_size: tuple[int, int]
    num_classes: int

    def logits(self, x: Array) -> Array: ...

    def cases(self, x: Array, target: int) -> dict[str, Any]: ...


def open_side(library: str, model: str, weights: str, threads: int, graph: str) -> Side:
    """Load the model for ``library`` (the gradtap sides read ``graph``, never torch)."""
    if library == "gradtap":
        from bench.gradtap_side import GradtapSide

        return GradtapSide(graph, threads=threads)
    from bench.torch_side import TorchSide

    return TorchSide(model, weights, library=library, threads=threads)


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def handle(side: Side, library: str, req: dict[str, Any]) -> dict[str, Any]:
    """Answer one request."""
    x = cfg.inputs(int(req.get("batch", 1)), side.input_size)
    target = cfg.target_class(side.num_classes)
    if req["cmd"] == "logits":
        return {"ok": True, "logits": side.logits(x).tolist()}
    method = req["method"]
    if method not in cfg.SUPPORTED[library]:
        return {"ok": False, "error": "not available"}
    case = side.cases(x, target)[method]
    try:
        timing = measure(
            case, repeats=int(req["repeats"]), budget_s=float(req["budget_s"]), min_s=req["min_s"]
        )
    except Exception as err:  # reported in the table; the benchmark goes on
        return {"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    return {"ok": True, "timing": timing.to_json()}


def serve(side: Side, library: str, out: TextIO) -> None:
    """Answer requests until ``quit`` or end of input."""
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "quit":
            break
        out.write(json.dumps(handle(side, library, req)) + "\n")
    out.write(json.dumps({"peak_rss_mb": peak_rss_mb(), "torch": "torch" in sys.modules}) + "\n")


def main(argv: list[str]) -> None:
    """Entry point: load, say ready, serve."""
    library, model, weights, threads = argv[0], argv[1], argv[2], int(argv[3])
    graph = argv[4] if len(argv) > 4 else ""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr
    t0 = time.perf_counter()
    side = open_side(library, model, weights, threads, graph)
    load_s = time.perf_counter() - t0
    out.write(json.dumps({"ready": True, "load_s": load_s, "rss_mb": peak_rss_mb()}) + "\n")
    serve(side, library, out)


if __name__ == "__main__":
    main(sys.argv[1:])
