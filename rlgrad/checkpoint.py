"""Atomic checkpoint files.

A checkpoint is written to a temporary file in the same directory, flushed to disk with
fsync, then renamed over the target (``os.replace`` is atomic on POSIX), and the directory
entry is fsync-ed: a process killed at any moment leaves either the previous checkpoint or
the new one, never a torn file. Loading uses ``torch.load(weights_only=True)``, which refuses
arbitrary pickled objects.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
RESTART_HINT = (
    "restore an earlier copy, or start the run again with rlgrad train CONFIG --run-dir DIR "
    "--overwrite"
)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not from this run."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            torch.save({"format": FORMAT_VERSION, **state}, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}; give a file written by rlgrad train "
            "(RUN_DIR/checkpoints/latest.pt)"
        )
    try:
        with warnings.catch_warnings():  # torch warns at length before failing on odd files
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        foreign = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if foreign:
            raise CheckpointError(
                f"refusing {path}: it holds a pickled {foreign.group(1)} object, not just "
                "tensors and plain data; only load checkpoints written by rlgrad train"
            ) from None
        raise CheckpointError(
            f"{path} is corrupt or truncated (unreadable data); {RESTART_HINT}"
        ) from None
    except Exception as exc:  # torch.load fails in many ways on a torn or foreign file
        reason = (str(exc).strip().split(". ") or [type(exc).__name__])[0].strip()
        raise CheckpointError(
            f"{path} is corrupt or truncated ({reason or type(exc).__name__}); {RESTART_HINT}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is not an rlgrad checkpoint (format {FORMAT_VERSION}); {RESTART_HINT}"
        )
    return state
