"""OpenCV decoding that hears what the codecs say.

libpng, libjpeg and libtiff report damaged data by printing to the process's stderr and often
still return pixels (a half-grey JPEG, a TIFF with missing strips). Decoding here captures that
output: errors and data-corruption warnings refuse the image with the codec's own words, benign
warnings are logged at debug level, and nothing reaches the user's terminal. Capturing
redirects the process's file descriptor 2, so concurrent decodes from several threads take turns.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import cv2
import numpy as np

from gradtap.runtime.errors import ImageError

logger = logging.getLogger(__name__)

# What codecs print when the pixels cannot be trusted (lower case).
FATAL_MARKERS = (
    "libpng error",
    "corrupt jpeg data",
    "premature end of jpeg file",
    "tiff_error",
    "[error",
    "opencv error",
)
# Known-harmless complaints: some cameras pad JPEG segments.
HARMLESS_MARKERS = ("extraneous bytes before marker",)
# File descriptor 2 is process-wide: decodes that capture it take turns.
_LOCK = threading.Lock()
# OpenCV's log prefix, e.g. "[ERROR:0@0.251] global grfmt_tiff.cpp:117 "
_CV_LOG_PREFIX = re.compile(r"^\[\s*\w+:[^\]]*\]\s*(?:global\s+\S+\s+)?")


def decode(data: bytes, name: str) -> np.ndarray:
    """Decode image bytes with ``cv2.IMREAD_UNCHANGED``, refusing damaged data.

    Args:
        data: the file's bytes.
        name: the file name, for messages.

    Raises:
        ImageError: the data is not an image OpenCV decodes, or a codec reported damage.
    """
    with _LOCK, _captured_stderr() as said:
        try:
            decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as err:
            decoded = None
            said.append(_cv_message(err))
    fatal = [ln for ln in said if _is_fatal(ln)]
    for line in said:
        logger.debug("decoder on %s: %s", name, line)
    if fatal:
        raise ImageError(f"{name!r} is damaged: {_CV_LOG_PREFIX.sub('', fatal[0])}")
    if decoded is None or decoded.size == 0:
        raise ImageError(f"cannot decode {name!r} as an image (not an image, or corrupt)")
    return decoded


def _is_fatal(line: str) -> bool:
    low = line.lower()
    return any(m in low for m in FATAL_MARKERS) and not any(m in low for m in HARMLESS_MARKERS)


def _cv_message(err: cv2.error) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return f"OpenCV error: {lines[-1] if lines else type(err).__name__}"


@contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what native code writes to file descriptor 2 inside the block (its lines)."""
    said: list[str] = []
    saved = _dup_stderr()
    if saved is None:  # no usable fd 2: decode without capturing
        yield said
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            said.extend(ln.strip() for ln in text.splitlines() if ln.strip())


def _dup_stderr() -> int | None:
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
        return os.dup(2)
    except (OSError, ValueError):
        return None
