"""The user-facing error contract: bad input exits 2 with one actionable line.

Raise :class:`UserError` anywhere below the CLI for a problem the user can fix; the CLI prints
``ptmkit: error: <what> (<where>): <fix>`` and exits 2. Anything else is a bug and keeps its
traceback (exit 1).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, reported as one line naming what, where and the fix."""

    def __init__(self, what: str, where: str, fix: str) -> None:
        self.what, self.where, self.fix = what, str(where), fix
        super().__init__(f"{what} ({self.where}): {fix}")


class RunStopped(UserError):
    """A run that started cleanly stopped for a reason the user must act on (e.g. it diverged).
    Unlike input errors, its directory is kept: it holds the last good checkpoint."""
