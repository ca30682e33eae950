"""The user-facing error contract: bad input exits 2 with one actionable line.

Raise :class:`UserError` anywhere below the CLI for a problem the user can fix; the CLI prints
``ptmkit: error: <what> (<where>): <fix>`` and exits 2. Anything else is a bug and keeps its
traceback (exit 1).
"""

from __future__ import annotations

from collections.abc import Callable


class UserError(Exception):
    """A problem with the user's input, reported as one line naming what, where and the fix."""

    exit_code = 2

    def __init__(self, what: str, where: str, fix: str) -> None:
        self.what, self.where, self.fix = what, str(where), fix
        super().__init__(f"{what} ({self.where}): {fix}")

    def __reduce__(self) -> tuple:
        # rebuilt from its three parts when it crosses from a worker process (compare --workers)
        return type(self), (self.what, self.where, self.fix)


class RunStopped(UserError):
    """A run that started cleanly stopped for a reason the user must act on (e.g. it diverged).
    Unlike input errors, its directory is kept: it holds the last good checkpoint."""


def is_whole(value: object) -> bool:
    """An int, not a bool (YAML's `yes`) nor a quoted "4": what a count must be before it is compared."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or a float, not a bool nor a quoted number."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_values(owner: object, checks: list[tuple[str, bool, str]], where: Callable[[str], str]) -> None:
    """Raise a UserError for the first (field, ok, fix) check that failed; `where` turns a field
    name into the name the user wrote (a flag such as --batch-size, or objective_options.alpha)."""
    for name, ok, fix in checks:
        if not ok:
            raise UserError(f"invalid {name}={getattr(owner, name)!r}", where(name), fix)
