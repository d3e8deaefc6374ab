"""Errors a user can fix: each is printed by the ``rlgrad`` command as one line, exit code 2."""

from __future__ import annotations


class UsageError(Exception):
    """A mistake in how a command was called (a bad flag, an occupied or empty run directory)."""
