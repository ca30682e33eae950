"""File-system helpers shared by everything that writes outputs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path


def share(path: Path) -> Path:
    """Give `path` (recursively, for a directory) the permissions the user's umask asks for.

    safetensors writes 0600 files and `tempfile.mkdtemp` 0700 directories; outputs renamed into
    place from those would otherwise be private to the writing user (a shared cluster account,
    a web server serving the report, a container with another uid).
    """
    umask = os.umask(0)
    os.umask(umask)
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)
    return path


def copy_items(source: Path, dest: Path, names: Iterable[str]) -> None:
    """Copy the named files and directories of `source` that exist into `dest` (a winning
    learning-rate run to its search's top level, a recipe's last stage to the recipe run)."""
    for name in names:
        item = source / name
        if item.is_dir():
            shutil.copytree(item, dest / name, dirs_exist_ok=True)
        elif item.is_file():
            shutil.copy2(item, dest / name)
