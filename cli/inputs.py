"""Image arguments: files, folders and glob patterns to a list of files, and unique output stems.

The rule, the same for folders and patterns: entries whose names carry an image suffix are
taken (a bad one fails later with its own message), everything else is skipped and reported.
Files named explicitly are always tried. Symlinked folders are never descended into, so symlink
loops cannot make expansion run away.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
    | {".gif", ".jp2", ".j2k"}
)


class RegularFile(click.Path):
    """An existing regular file: folders, pipes and devices are refused before anything reads."""

    def __init__(self) -> None:
        super().__init__(exists=True, dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        if not stat.S_ISREG(os.stat(path).st_mode):
            self.fail(f"{str(path)!r} is not a file (a pipe, socket or device)", param, ctx)
        return path


REGULAR_FILE = RegularFile()
_GLOB_CHARS = re.compile(r"[*?\[]")
NOT_IMAGE = "not an image file name"
HIDDEN = "a hidden file"
SUBFOLDER = "a folder, give -r to include subfolders"
SYMLINKED_FOLDER = "a symlinked folder, not followed"


@dataclass(frozen=True)
class Expanded:
    """The files to process, arguments that named nothing usable, and what was skipped.

    Attributes:
        files: image files, in argument order, each once.
        problems: (argument, reason) for arguments that matched no image file.
        skipped: (path, reason) for entries of folders and patterns that were not taken.
    """

    files: tuple[Path, ...]
    problems: tuple[tuple[str, str], ...]
    skipped: tuple[tuple[str, str], ...] = ()


def expand(args: Iterable[str], *, recursive: bool = False) -> Expanded:
    """Expand image arguments in order, dropping duplicates (the same file by any path).

    A file is taken as is; a folder gives the image files in it (sorted; with ``recursive`` also
    in subfolders, following no symlinked folders); a pattern with ``*``, ``?`` or ``[`` is a glob
    (``**`` spans folders, again without following symlinked folders).

    Args:
        args: the command-line arguments.
        recursive: descend into subfolders of folder arguments.

    Returns:
        The files, the arguments that matched nothing, and the skipped entries.
    """
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for arg in args:
        found, problem, passed = _expand_one(arg, recursive)
        if problem:
            problems.append((arg, problem))
        skipped += passed
        for path in found:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                files.append(path)
    return Expanded(tuple(files), tuple(problems), tuple(skipped))


def _expand_one(arg: str, recursive: bool) -> tuple[list[Path], str, list[tuple[str, str]]]:
    path = Path(arg)
    if path.is_dir():
        found, skipped = _folder_images(path, recursive)
        return found, "" if found else f"folder {arg!r} holds no image files", skipped
    if path.exists() or path.is_symlink():
        return [path], "", []
    if _GLOB_CHARS.search(arg):
        matches, links = _glob(arg)
        found, skipped = _split(sorted(matches))
        return found, "" if found else f"pattern {arg!r} matches no image files", skipped + links
    return [], f"{arg!r} does not exist", []


def _folder_images(folder: Path, recursive: bool) -> tuple[list[Path], list[tuple[str, str]]]:
    found: list[Path] = []
    skipped: list[tuple[str, str]] = []
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        return found, [(str(folder), f"cannot list the folder: {err.strerror}")]
    for entry in entries:
        if entry.is_dir() and entry.is_symlink():
            skipped.append((str(entry), SYMLINKED_FOLDER if recursive else SUBFOLDER))
        elif entry.is_dir():
            if not recursive:
                skipped.append((str(entry), SUBFOLDER))
                continue
            more, passed = _folder_images(entry, recursive)
            found += more
            skipped += passed
        elif _is_image_name(entry):
            found.append(entry)
        else:
            skipped.append((str(entry), _why_not(entry)))
    return found, skipped


def _split(paths: Iterable[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Glob matches: image files, and the rest as skipped."""
    found: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for path in paths:
        if path.is_dir():
            continue
        if _is_image_name(path):
            found.append(path)
        else:
            skipped.append((str(path), _why_not(path)))
    return found, skipped


def _glob(pattern: str) -> tuple[list[Path], list[tuple[str, str]]]:
    """Matches of a glob pattern; ``**`` descends into real folders only (no symlink loops)."""
    if "**" not in pattern:
        return [Path(m) for m in glob.glob(pattern)], []
    parts = Path(pattern).parts
    fixed = next(k for k, p in enumerate(parts) if _GLOB_CHARS.search(p))
    root = Path(*parts[:fixed])
    found: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for top, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        links = [d for d in dirs if os.path.islink(os.path.join(top, d))]
        skipped += [(str(Path(top, d)), SYMLINKED_FOLDER) for d in links]
        for name in names:
            path = Path(top, name)
            if _matches(parts[fixed:], path.relative_to(root).parts):
                found.append(path)
    return found, skipped


def _matches(pattern: Sequence[str], parts: Sequence[str]) -> bool:
    """Whether path ``parts`` match glob ``pattern`` parts (``**`` = any number of folders)."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(
            _matches(rest, parts[k:])
            for k in range(len(parts) + 1)
            if not any(p.startswith(".") for p in parts[:k])
        )
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatch(parts[0], head) and _matches(rest, parts[1:])


def _why_not(path: Path) -> str:
    return HIDDEN if path.name.startswith(".") else NOT_IMAGE


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
