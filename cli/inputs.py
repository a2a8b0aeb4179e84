"""Image arguments: files, folders and glob patterns to a list of files, and unique output stems."""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".jp2"}
)
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Expanded:
    """The files to process, and the arguments that named nothing usable (with why)."""

    files: tuple[Path, ...]
    problems: tuple[tuple[str, str], ...]


def expand(args: Iterable[str], *, recursive: bool = False) -> Expanded:
    """Expand image arguments in order, dropping duplicates.

    A file is taken as is (a bad image fails later, with its own message); a folder gives the
    image files in it (by suffix, sorted; with ``recursive`` also in subfolders, following no
    symlinked folders); a pattern with ``*``, ``?`` or ``[`` is a glob (``**`` spans folders).

    Args:
        args: the command-line arguments.
        recursive: descend into subfolders of folder arguments.

    Returns:
        The files, and (argument, reason) for arguments that matched nothing.
    """
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for arg in args:
        found, problem = _expand_one(arg, recursive)
        if problem:
            problems.append((arg, problem))
        for path in found:
            key = path.absolute()
            if key not in seen:
                seen.add(key)
                files.append(path)
    return Expanded(tuple(files), tuple(problems))


def _expand_one(arg: str, recursive: bool) -> tuple[list[Path], str]:
    path = Path(arg)
    if path.is_dir():
        found = _folder_images(path, recursive)
        return found, "" if found else f"folder {arg!r} holds no image files"
    if path.exists() or path.is_symlink():
        return [path], ""
    if _GLOB_CHARS.search(arg):
        matches = sorted(glob.glob(arg, recursive=True))
        found = [Path(m) for m in matches if _is_image_name(Path(m)) and Path(m).is_file()]
        return found, "" if found else f"pattern {arg!r} matches no image files"
    return [], f"{arg!r} does not exist"


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    found: list[Path] = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return found
    for entry in entries:
        if entry.is_dir():
            if recursive and not entry.is_symlink():
                found.extend(_folder_images(entry, recursive))
        elif _is_image_name(entry):
            found.append(entry)
    return found


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def slug(text: str, *, max_len: int = 60) -> str:
    """A file-name-safe version of ``text``: (Unicode) letters, digits, '.', '_' and '-' only."""
    out = re.sub(r"[^\w.-]+", "_", text).strip("._")
    return out[:max_len] or "image"


def unique_stems(files: Sequence[Path]) -> list[str]:
    """One output folder name per file: its stem, with -2, -3, ... where stems collide."""
    stems: list[str] = []
    used: set[str] = set()
    for path in files:
        base = slug(path.stem)
        stem, k = base, 2
        while stem.lower() in used:
            stem, k = f"{base}-{k}", k + 1
        used.add(stem.lower())
        stems.append(stem)
    return stems
