"""Atomic, checksummed checkpoint files.

A checkpoint is written to a temporary file in the same directory, flushed to disk with
fsync, then renamed over the target (``os.replace`` is atomic on POSIX), and the directory
entry is fsync-ed: a process killed at any moment leaves either the previous checkpoint or
the new one, never a torn file. A killed save can leave its temporary file behind
(``.latest.pt.XXXXXXXX.tmp``); :func:`remove_orphan_temp_files` clears them when the next
run starts in that directory.

The file is what ``torch.save`` writes (a zip archive) with the SHA-256 of those bytes in the
archive's trailing comment (``rlgrad-sha256:<hex>``), hashed as they are written:
:func:`load_checkpoint` checks it before unpickling anything and refuses a file whose bytes do
not match, so a flipped bit anywhere is reported as corruption instead of loading wrong numbers.
The file stays an ordinary torch file, and loading uses ``torch.load(weights_only=True)``,
which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import torch

FORMAT_VERSION = 2  # 2: with a SHA-256 trailer; 1 (before it) had none
CHECKSUM_PREFIX = b"rlgrad-sha256:"
TRAILER_LENGTH = len(CHECKSUM_PREFIX) + 64  # the zip comment: prefix + hex digest
_EOCD = b"PK\x05\x06"  # a zip archive's end-of-central-directory record (22 bytes + comment)
RESTART_HINT = (
    "restore an earlier copy, or start the run again with rlgrad train CONFIG --run-dir DIR "
    "--overwrite"
)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not from this run."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically, with a checksum over the whole file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w+b") as tmp:
            writer = _HashingWriter(tmp)
            torch.save({"format": FORMAT_VERSION, **state}, writer)
            _append_checksum(tmp, writer.sha256.hexdigest())
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


def remove_orphan_temp_files(path: str | Path) -> list[Path]:
    """Delete the temporary files that killed saves of ``path`` left behind; returns them.

    Only call this while no other process can be saving ``path`` (hold the run directory's
    lock, :mod:`rlgrad.run_lock`): a live save's temporary file has the same form.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    orphans = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    return orphans


class _HashingWriter:
    """The file ``torch.save`` writes through, hashing every byte on the way (no copy in memory)."""

    def __init__(self, file: BinaryIO):
        self.file, self.sha256 = file, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def _append_checksum(file: BinaryIO, digest: str) -> None:
    """Turn the archive's empty comment into ``rlgrad-sha256:<digest>``.

    ``digest`` is the SHA-256 of the archive as ``torch.save`` wrote it, i.e. of the file's
    bytes before the comment with the comment's length field (its last two bytes) zero.
    """
    size = file.seek(0, os.SEEK_END)
    file.seek(max(size - 22, 0))
    end_record = file.read(22)
    if size < 22 or end_record[:4] != _EOCD or end_record[-2:] != b"\0\0":
        raise RuntimeError("torch.save wrote an unexpected archive layout; cannot checksum it")
    trailer = CHECKSUM_PREFIX + digest.encode()
    file.seek(size - 2)
    file.write(len(trailer).to_bytes(2, "little") + trailer)


def _checksum_matches(file: BinaryIO) -> bool | None:
    """Whether the file's bytes match its recorded checksum; None where it records none."""
    size = file.seek(0, os.SEEK_END)
    body = size - TRAILER_LENGTH - 2
    if body < 20:
        return None
    file.seek(body)
    tail = file.read(TRAILER_LENGTH + 2)
    if tail[:2] != TRAILER_LENGTH.to_bytes(2, "little") or not tail[2:].startswith(CHECKSUM_PREFIX):
        return None
    sha256 = hashlib.sha256()
    file.seek(0)
    while body > 0:
        chunk = file.read(min(body, 1 << 20))
        if not chunk:
            return False
        sha256.update(chunk)
        body -= len(chunk)
    sha256.update(b"\0\0")  # the comment length torch.save wrote
    return sha256.hexdigest().encode() == tail[2 + len(CHECKSUM_PREFIX) :]


def load_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; clear errors for bad files.

    The checksum is verified before anything is unpickled; a file without one is read only to
    say what it is (an older rlgrad checkpoint, a foreign file) and then refused.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}; give a file written by rlgrad train "
            "(RUN_DIR/checkpoints/latest.pt)"
        )
    try:
        file = open(path, "rb")  # noqa: SIM115 (one open file: checked and loaded bytes agree)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
    with file:
        checksummed = _checksum_matches(file)
        if checksummed is False:
            raise CheckpointError(
                f"{path} is corrupt or truncated (its SHA-256 checksum does not match its "
                f"contents); {RESTART_HINT}"
            )
        file.seek(0)
        state = _unpickle(path, file, map_location)
    if isinstance(state, dict) and state.get("format") == FORMAT_VERSION and not checksummed:
        raise CheckpointError(
            f"{path} is corrupt or truncated (its checksum is missing or damaged); {RESTART_HINT}"
        )
    if isinstance(state, dict) and state.get("format") == 1:
        raise CheckpointError(
            f"{path} was written by an older rlgrad without a checksum (format 1), which this "
            f"version does not load; {RESTART_HINT}"
        )
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is not an rlgrad checkpoint (format {FORMAT_VERSION}); {RESTART_HINT}"
        )
    return state


def _unpickle(path: Path, file: BinaryIO, map_location: torch.device | str) -> Any:
    """``torch.load(weights_only=True)`` of ``file``, its failures as one-line errors."""
    try:
        with warnings.catch_warnings():  # torch warns at length before failing on odd files
            warnings.simplefilter("ignore")
            return torch.load(file, map_location=map_location, weights_only=True)
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
        reason = reason.splitlines()[0] if reason else type(exc).__name__
        raise CheckpointError(
            f"{path} is corrupt or truncated ({reason}); {RESTART_HINT}"
        ) from None
