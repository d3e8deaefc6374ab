"""Errors a user can fix: each is printed by the ``rlgrad`` command as one line, exit code 2."""

from __future__ import annotations


class UsageError(Exception):
    """A mistake in how a command was called (a bad flag, an occupied or empty run directory)."""


class BuildError(UsageError):
    """A config the schema accepts but from which the run cannot be built: a network size torch
    refuses (``agent.hidden_sizes=[-1]``), a device that is not there (``learner.device=cuda``
    without a GPU). Raised before anything in the run directory is written or removed."""


def describe_os_error(exc: OSError) -> str:
    """An ``OSError`` (a read-only run directory, a path that is a file, a full disk) as the one
    line ``cannot use PATH: REASON; …``."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    where = f" {exc.filename}" if exc.filename else ""
    if exc.filename2:
        where += f" (and {exc.filename2})"
    return f"cannot use{where}: {reason}; check that the path exists and is writable"
