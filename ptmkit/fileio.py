"""File-system helpers shared by everything that writes outputs."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ptmkit.errors import UserError


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


def check_writable(path: Path, flag: str, *, directory: bool = True) -> None:
    """The output `path` can be written: it, or the nearest directory above it that exists, is a
    writable directory (or, with `directory=False`, `path` may be a file to replace). Checked
    before any work, so a read-only place, or a file in the way, fails at once, not with a
    traceback after minutes of training."""
    target = Path(path).absolute()
    existing = nearest_existing(target)
    if existing != target and not existing.is_dir():
        raise UserError(f"{existing} is a file, not a folder", str(path), f"choose a {flag} that is not under a file")
    if directory and existing == target and not target.is_dir():
        raise UserError("output path is a file", str(path), f"choose a directory path for {flag}")
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"no write permission on {folder}", str(path),
                        f"choose a writable {flag}, or give yourself write permission")


def nearest_existing(path: Path) -> Path:
    """`path` if it exists, else the nearest path above it that does (the root at worst)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def read_json_object(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A JSON object a run wrote; a damaged one (an interrupted write, an edit) is one UserError
    naming it as `what`."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: bad JSON or bad UTF-8
        raise UserError(f"damaged {what} ({err.__class__.__name__}: {err})", str(path), fix) from None
    if not isinstance(values, dict):
        raise UserError(f"damaged {what} (not a JSON object)", str(path), fix)
    return values


def is_within(path: Path, directory: Path) -> bool:
    """`path` is `directory` or lies under it, as written (a symlink inside would be deleted) or
    resolved (the same place reached through another name): what --overwrite of `directory`
    would remove."""
    return (Path(os.path.abspath(path)).is_relative_to(os.path.abspath(directory))
            or Path(path).resolve().is_relative_to(Path(directory).resolve()))


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text through a temporary file beside `path`, flushed to disk before it is
    renamed into place, so a reader (a browser refreshing the report of a running compare, a
    tokenizer loaded after a crash) never sees half a file; the temporary file has the umask's
    permissions (unlike mkstemp's 0600) and is removed if the write fails."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_items(source: Path, dest: Path, names: Iterable[str]) -> None:
    """Copy the named files and directories of `source` that exist into `dest` (a winning
    learning-rate run to its search's top level, a recipe's last stage to the recipe run)."""
    for name in names:
        item = source / name
        if item.is_dir():
            shutil.copytree(item, dest / name, dirs_exist_ok=True)
        elif item.is_file():
            shutil.copy2(item, dest / name)


def read_yaml(path: Path, flag: str) -> Any:
    """A YAML file the user wrote (a config, a recipe), as UTF-8 whatever the locale; a missing
    file, bad bytes or bad syntax is one UserError naming it (`flag` says how it was given)."""
    if not path.is_file():
        raise UserError("file not found", str(path), f"check the {flag} path")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"invalid YAML: {str(err).splitlines()[0]}", str(path), "fix the syntax") from None
    except UnicodeDecodeError as err:
        raise UserError(f"not UTF-8 text (byte {err.start})", str(path), "save the file as UTF-8") from None
