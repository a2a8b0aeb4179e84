"""Checking an ONNX file before anything loads it: external-data references stay in its folder.

An ONNX tensor can keep its bytes in another file (``external_data`` with a ``location``). A model
from elsewhere could point that at ``../../home/me/.ssh/id_rsa`` or an absolute path, and older
onnxruntime versions would read it. :func:`check_external_data` finds every such reference by
walking the protobuf wire format (initializers, sparse initializers, tensor attributes of nodes,
subgraphs and functions) without copying the tensor payloads, so it costs milliseconds even for
a 500 MB model, and refuses locations that resolve (symlinks included) outside the model's folder.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from gradtap.runtime.errors import ModelError

# Field numbers of onnx.proto3 messages, and which fields hold which submessages.
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _FUNCTION, _SPARSE, _TENSOR = range(7)
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 25: _FUNCTION},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _FUNCTION: {7: _NODE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
}
_TENSOR_NAME, _TENSOR_EXTERNAL = 8, 13
# protobuf's own recursion limit: deeper models (If inside If ...) cannot be parsed by onnx.
_MAX_DEPTH = 100
# A serialized protobuf message cannot exceed 2 GiB; bigger models keep weights as external data.
MAX_MODEL_BYTES = 2**31 - 1


class _Malformed(Exception):
    """The bytes are not a well-formed protobuf message."""


class _TooDeep(_Malformed):
    """Messages nested deeper than protobuf parses."""


def check_model_file(path: str | os.PathLike[str]) -> None:
    """Refuse, without reading it, what cannot be an ONNX file: folders, pipes, devices, sockets,
    empty files and files over the 2 GiB a protobuf message can hold.

    Raises:
        ModelError: naming the file and what it is.
    """
    name = str(path)
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ENOENT:
            raise ModelError(f"model file {name!r} does not exist") from None
        raise ModelError(f"cannot read model {name!r}: {err.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelError(f"model path {name!r} is a folder, not an ONNX file")
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"model path {name!r} is not a file (a pipe, socket or device)")
    if st.st_size == 0:
        raise ModelError(f"model file {name!r} is empty (0 bytes)")
    if st.st_size > MAX_MODEL_BYTES:
        raise ModelError(
            f"model file {name!r} has {st.st_size} bytes, more than the 2 GiB an ONNX file can "
            "hold (bigger models keep their weights in external data files)"
        )


def check_external_data(model: str | os.PathLike[str] | bytes, *, base: Path | None = None) -> None:
    """Refuse external-data locations outside the model's folder.

    Args:
        model: an ONNX file, or serialized model bytes.
        base: the folder locations are relative to (default: the file's folder, both as named
            and with symlinks resolved, since loaders differ; the current folder for bytes, as
            onnxruntime resolves them).

    Raises:
        ModelError: a location is absolute or resolves outside its folder, or the file is not a
            well-formed protobuf message.
    """
    name = "<in-memory model>" if isinstance(model, bytes) else str(model)
    if base is not None:
        bases = [base]
    elif isinstance(model, bytes):
        bases = [Path.cwd()]
    else:
        bases = [Path(model).absolute().parent, Path(model).resolve().parent]
    for tensor, location in external_locations(model):
        if Path(location).is_absolute() or not all(_inside(b, location) for b in bases):
            raise ModelError(
                f"{name}: external data {location!r} of tensor {tensor!r} points outside the "
                "model's folder; refused"
            )


def _inside(base: Path, location: str) -> bool:
    """Whether ``base / location``, symlinks resolved, stays inside ``base`` (resolved)."""
    return (base / location).resolve().is_relative_to(base.resolve())


def external_locations(model: str | os.PathLike[str] | bytes) -> list[tuple[str, str]]:
    """(tensor name, location) of every tensor whose data lives in another file.

    Raises:
        ModelError: the file cannot be read or is not a well-formed protobuf message.
    """
    if isinstance(model, bytes):
        return _scan(memoryview(model), "<in-memory model>")
    path = Path(model)
    check_model_file(path)
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced since checked
                raise ModelError(f"model path {str(path)!r} is not a file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                view = memoryview(mm)
                try:
                    return _scan(view, str(path))
                finally:
                    view.release()
    except OSError as err:
        raise ModelError(f"cannot read model {str(path)!r}: {err.strerror}") from None


def _scan(buf: memoryview, name: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    try:
        _walk(buf, 0, len(buf), _MODEL, found, 0)
    except _TooDeep:
        raise ModelError(
            f"cannot load {name!r}: its graphs nest more than {_MAX_DEPTH} levels deep "
            "(If/Loop inside If/Loop ...), more than protobuf parses"
        ) from None
    except _Malformed as err:
        raise ModelError(
            f"cannot load {name!r} as an ONNX model: not an ONNX model, not even a protobuf "
            f"file ({err})"
        ) from None
    return found


def _walk(buf: memoryview, start: int, end: int, kind: int, found: list, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise _TooDeep("nested too deeply")
    if kind == _TENSOR:
        _tensor(buf, start, end, found)
        return
    children = _CHILDREN[kind]
    for number, lo, hi in _fields(buf, start, end):
        if number in children and hi >= 0:
            _walk(buf, lo, hi, children[number], found, depth + 1)


def _tensor(buf: memoryview, start: int, end: int, found: list) -> None:
    name, location = "", ""
    for number, lo, hi in _fields(buf, start, end):
        if number == _TENSOR_NAME and hi >= 0:
            name = bytes(buf[lo:hi]).decode("utf-8", "replace")
        elif number == _TENSOR_EXTERNAL and hi >= 0:
            entry = {k: bytes(buf[a:b]) for k, a, b in _fields(buf, lo, hi) if b >= 0}
            if entry.get(1) == b"location":
                location = entry.get(2, b"").decode("utf-8", "replace")
    if location:
        found.append((name, location))


def _fields(buf: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each field; end is -1 for fields that are not bytes."""
    while pos < end:
        number, wire, lo, hi, pos = _field(buf, pos, end)
        if wire == 4:
            raise _Malformed("an end of group outside a group")
        yield number, lo, hi if wire == 2 else -1


def _field(buf: memoryview, pos: int, end: int) -> tuple[int, int, int, int, int]:
    """One field at ``pos``: (number, wire type, value start, value end, next position)."""
    key, pos = _varint(buf, pos, end)
    number, wire = key >> 3, key & 7
    if number == 0:  # no protobuf message has field 0: stops at once on zeros and most junk
        raise _Malformed("field number 0")
    start = pos
    if wire == 0:
        _, pos = _varint(buf, pos, end)
    elif wire == 2:
        size, start = _varint(buf, pos, end)
        pos = start + size
    elif wire in (1, 5):
        pos += 8 if wire == 1 else 4
    elif wire == 3:  # a (deprecated) group: protobuf parsers skip it as an unknown field
        pos = _skip_group(buf, pos, end, number)
    elif wire != 4:
        raise _Malformed(f"unexpected wire type {wire}")
    if pos > end:
        raise _Malformed("a field runs past the end of the data")
    return number, wire, start, pos, pos


def _skip_group(buf: memoryview, pos: int, end: int, number: int) -> int:
    """The position after the end-group tag that closes group ``number``."""
    while pos < end:
        inner, wire, _, _, pos = _field(buf, pos, end)
        if wire == 4:
            if inner != number:
                raise _Malformed("mismatched end of group")
            return pos
    raise _Malformed("an unterminated group")


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while pos < end and shift < 70:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise _Malformed("a truncated number")
