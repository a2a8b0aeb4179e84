"""Atomic file writes: a hidden temporary file beside the destination, renamed into place.

Readers see the old file or the new one, never half of one; a failed write (a full disk, a
signal) leaves no temporary file behind. The temporary file is created like any other file, so
the result has the permissions the umask gives (0644 under the usual 022), whatever writes it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_PREFIX = "."
TEMP_MARK = ".tmp"


def temp_name(dst: Path) -> Path:
    """The hidden temporary name beside ``dst``, keeping its suffix (encoders read it)."""
    return dst.with_name(f"{TEMP_PREFIX}{dst.stem}.{uuid.uuid4().hex[:8]}{TEMP_MARK}{dst.suffix}")


@contextmanager
def atomic_path(dst: Path) -> Iterator[Path]:
    """Yield a new, empty temporary path beside ``dst``; rename it to ``dst`` when the block ends.

    Raises:
        OSError: creating, writing or renaming failed; the error names ``dst``, not the
            temporary file, and the temporary file is gone.
    """
    dst = Path(dst)
    tmp = temp_name(dst)
    try:
        with open(tmp, "xb"):  # O_EXCL, mode 0666 & ~umask
            pass
        yield tmp
        os.replace(tmp, dst)
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(dst)) from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def write_bytes(dst: Path, data: bytes) -> None:
    """Write ``data`` to ``dst`` atomically."""
    with atomic_path(dst) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
