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
import logging
import math
import mmap
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

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
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_NAME, _TENSOR_EXTERNAL = 1, 2, 8, 13
# Bytes per element of TensorProto.DataType values with a fixed size.
_ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
# protobuf's own recursion limit: deeper models (If inside If ...) cannot be parsed by onnx.
_MAX_DEPTH = 100
# A serialized protobuf message cannot exceed 2 GiB; bigger models keep weights as external data.
MAX_MODEL_BYTES = 2**31 - 1


class External(NamedTuple):
    """One tensor whose bytes live in another file (offset and length as recorded, if any)."""

    tensor: str
    location: str
    offset: int | None
    length: int | None


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
    for tensor, location, offset, length in external_tensors(model):
        if Path(location).is_absolute() or not all(_inside(b, location) for b in bases):
            raise ModelError(
                f"{name}: external data {location!r} of tensor {tensor!r} points outside the "
                "model's folder; refused"
            )
        problem = _data_file_problem(bases[0] / location, (offset or 0) + (length or 0))
        if problem:
            raise ModelError(
                f"{name}: external data file {location!r} of tensor {tensor!r} {problem}"
            )


def _data_file_problem(path: Path, needed: int) -> str:
    """Why an external-data file cannot be read ('' when it can), without opening it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "is missing (a model copied without its data file?)"
    except OSError as err:
        return f"cannot be read: {err.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "is not a file (a pipe, socket or device)"
    if st.st_size < needed:
        return f"has {st.st_size} bytes, the tensor's data ends at byte {needed} (truncated?)"
    return ""


def _inside(base: Path, location: str) -> bool:
    """Whether ``base / location``, symlinks resolved, stays inside ``base`` (resolved)."""
    return (base / location).resolve().is_relative_to(base.resolve())


def external_locations(model: str | os.PathLike[str] | bytes) -> list[tuple[str, str]]:
    """(tensor name, location) of every tensor whose data lives in another file.

    Raises:
        ModelError: the file cannot be read or is not a well-formed protobuf message.
    """
    return [(e.tensor, e.location) for e in external_tensors(model)]


def external_tensors(model: str | os.PathLike[str] | bytes) -> list[External]:
    """Every tensor whose data lives in another file, with its recorded offset and length.

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


def _scan(buf: memoryview, name: str) -> list[External]:
    found: list[External] = []
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
    name, info, dims, dtype = "", {}, [], 0
    for number, lo, hi in _fields(buf, start, end):
        if number == _TENSOR_DIMS:
            dims += _varints(buf, lo, hi) if hi >= 0 else [_varint(buf, lo, end)[0]]
        elif number == _TENSOR_TYPE and hi < 0:
            dtype = _varint(buf, lo, end)[0]
        elif number == _TENSOR_NAME and hi >= 0:
            name = bytes(buf[lo:hi]).decode("utf-8", "replace")
        elif number == _TENSOR_EXTERNAL and hi >= 0:
            entry = {k: bytes(buf[a:b]) for k, a, b in _fields(buf, lo, hi) if b >= 0}
            info[entry.get(1, b"")] = entry.get(2, b"").decode("utf-8", "replace")
    if info.get(b"location"):
        length = _int(info.get(b"length"))
        if length is None and dtype in _ELEMENT_BYTES:
            length = _ELEMENT_BYTES[dtype] * math.prod(dims)
        found.append(External(name, info[b"location"], _int(info.get(b"offset")), length))


def _varints(buf: memoryview, pos: int, end: int) -> list[int]:
    out = []
    while pos < end:
        value, pos = _varint(buf, pos, end)
        out.append(value)
    return out


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


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


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
# C++ frames and signatures onnxruntime appends, e.g. "onnxruntime::Foo(const Bar&) ...".
_CPP = re.compile(r"\s*(?:Stacktrace:|\S*::\S*\(.*)$")
_MAX_MESSAGE = 300


def runtime_message(err: BaseException) -> str:
    """onnxruntime's complaint about a model as one short line: no error-code prefix, no C++
    signatures or stack frames, at most 300 characters."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = _ORT_PREFIX.sub("", lines[0]) if lines else type(err).__name__
    text = _CPP.sub("", text) or text
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def runtime_log_level() -> int:
    """onnxruntime's own log severity: fatal only (its errors reach the user as exceptions),
    everything with ``-vv`` (the ``gradtap`` logger at debug level)."""
    return 0 if logging.getLogger("gradtap").isEnabledFor(logging.DEBUG) else 4
