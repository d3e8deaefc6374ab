"""Read a W&B run's ``.wandb`` transaction log back, for tests.

An offline run (``wandb.init(mode="offline", dir=D)``) writes
``D/wandb/offline-run-<YYYYmmdd_HHMMSS>-<id>/run-<id>.wandb``. The format, as written by
wandb-core (``core/pkg/leveldb`` and ``core/internal/transactionlog`` in the wandb repository;
the pre-0.18 Python writer ``wandb/sdk/internal/datastore.py`` wrote the same bytes):

* a 7-byte file header ``<4sHB``: ident ``b":W&B"``, magic ``0xBEE1`` (little-endian, so the
  bytes are ``e1 be``), version ``0``. It occupies the first 7 bytes of block 0, so block
  boundaries stay at absolute file offsets that are multiples of 32 KiB;
* then LevelDB-log chunks in 32 KiB blocks. Each chunk is a 7-byte header ``<IHB`` (checksum,
  payload length, chunk type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4) and its payload. A chunk
  never crosses a block boundary; when fewer than 7 bytes remain in a block they are zero
  padding. A record is one FULL chunk or FIRST, MIDDLE*, LAST (chunks may have empty payloads);
* the checksum is the plain IEEE CRC-32 (``zlib.crc32``) of the type byte followed by the
  payload: wandb uses ``leveldb.CRCAlgoIEEE``, *not* LevelDB's masked CRC-32C;
* each record's bytes are a serialized ``wandb.proto.wandb_internal_pb2.Record``.

This module reimplements the framing on purpose (no wandb private reader) so tests can check
what actually reached the file.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK_SIZE = 32 * 1024
FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
CHUNK_HEADER = struct.Struct("<IHB")  # checksum, payload length, chunk type
WANDB_IDENT = b":W&B"
WANDB_MAGIC = 0xBEE1
WANDB_VERSION = 0
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4

__all__ = [
    "WandbLogError",
    "find_run_file",
    "find_run_files",
    "history_rows",
    "iter_payloads",
    "read_records",
    "run_info",
    "run_record",
    "wait_for_exit_record",
]


class WandbLogError(ValueError):
    """The file is not a well-formed W&B transaction log."""


def _chunk_crc(chunk_type: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(bytes((chunk_type,)))) & 0xFFFFFFFF


def iter_payloads(data: bytes, *, strict: bool = True) -> Iterator[bytes]:
    """Yield each record's payload bytes from the contents of a ``.wandb`` file.

    With ``strict=False`` a torn tail (a run still writing, or one that crashed mid-record) is
    ignored instead of raising; corruption before the tail always raises.
    """
    if len(data) < FILE_HEADER.size:
        raise WandbLogError(f"file is {len(data)} bytes, shorter than the W&B header")
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    if ident != WANDB_IDENT:
        raise WandbLogError(f"bad W&B ident {ident!r}, expected {WANDB_IDENT!r}")
    if magic != WANDB_MAGIC:
        raise WandbLogError(f"bad W&B magic {magic:#06x}, expected {WANDB_MAGIC:#06x}")
    if version != WANDB_VERSION:
        raise WandbLogError(f"unsupported W&B log version {version}")

    n = len(data)
    pos = FILE_HEADER.size
    pending: bytearray | None = None  # payload of a FIRST/MIDDLE... record in progress
    pending_at = 0

    def torn(msg: str) -> WandbLogError | None:
        return WandbLogError(msg) if strict else None

    while pos < n:
        block_left = BLOCK_SIZE - pos % BLOCK_SIZE
        if block_left < CHUNK_HEADER.size:
            trailer = data[pos : pos + block_left]
            if trailer.strip(b"\0"):
                raise WandbLogError(f"non-zero block trailer at offset {pos}")
            pos += block_left
            continue
        if pos + CHUNK_HEADER.size > n:
            if data[pos:].strip(b"\0") and (err := torn(f"truncated chunk header at {pos}")):
                raise err
            break
        checksum, length, chunk_type = CHUNK_HEADER.unpack_from(data, pos)
        if checksum == 0 and length == 0 and chunk_type == 0:
            # Zero-filled rest of a block (preallocated or never written); LevelDB readers skip
            # to the next block. Nothing may be zeroed inside a multi-chunk record.
            if pending is not None:
                raise WandbLogError(f"zeroed block inside the record starting at {pending_at}")
            pos += block_left
            continue
        start = pos + CHUNK_HEADER.size
        end = start + length
        if length > block_left - CHUNK_HEADER.size:
            raise WandbLogError(f"chunk at {pos} (length {length}) crosses a block boundary")
        if end > n:
            if err := torn(f"chunk at {pos} needs {length} bytes, file ends at {n}"):
                raise err
            pending = None
            break
        payload = data[start:end]
        if _chunk_crc(chunk_type, payload) != checksum:
            raise WandbLogError(f"checksum mismatch in chunk at offset {pos}")
        if chunk_type == FULL:
            if pending is not None:
                raise WandbLogError(f"FULL chunk at {pos} inside record started at {pending_at}")
            yield payload
        elif chunk_type == FIRST:
            if pending is not None:
                raise WandbLogError(f"FIRST chunk at {pos} inside record started at {pending_at}")
            pending, pending_at = bytearray(payload), pos
        elif chunk_type in (MIDDLE, LAST):
            if pending is None:
                raise WandbLogError(f"chunk type {chunk_type} at {pos} without a FIRST chunk")
            pending += payload
            if chunk_type == LAST:
                yield bytes(pending)
                pending = None
        else:
            raise WandbLogError(f"unknown chunk type {chunk_type} at offset {pos}")
        pos = end

    if pending is not None and (err := torn(f"record at {pending_at} has no LAST chunk")):
        raise err


def read_records(path: str | Path, *, strict: bool = True) -> list[pb.Record]:
    """All ``Record`` protos in a ``.wandb`` file, in file order."""
    records = []
    for payload in iter_payloads(Path(path).read_bytes(), strict=strict):
        record = pb.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def wait_for_exit_record(
    path: str | Path, timeout: float = 30.0, poll: float = 0.02
) -> list[pb.Record]:
    """Poll until the run's ``exit`` record is on disk, then return all records (strictly read).

    ``run.finish()`` can return before wandb-core has flushed the transaction log (seen with
    wandb 0.31: right after ``finish()`` the file may still hold only its 7-byte header for a
    few tens of ms). ``wandb.teardown()`` also waits for the flush, but stops wandb-core.
    Raises ``TimeoutError`` if no ``exit`` record appears within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = read_records(path, strict=False)
        except (FileNotFoundError, WandbLogError):
            records = []  # not created yet, or the header is not written yet
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return read_records(path)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no exit record in {path} after {timeout}s")
        time.sleep(poll)


def find_run_file(wandb_dir: str | Path) -> Path:
    """The single ``offline-run-*/run-*.wandb`` file at any depth under ``wandb_dir``.

    ``wandb_dir`` may be the ``dir=`` given to ``wandb.init``, its ``wandb/`` subfolder, or the
    run folder itself. Raises ``FileNotFoundError`` if there is none and ``ValueError`` if there
    are several (the ``latest-run`` symlink is not counted twice).
    """
    root = Path(wandb_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"not a directory: {root}")
    candidates = [root.glob("run-*.wandb")] if root.name.startswith("offline-run-") else []
    candidates.append(root.rglob("offline-run-*/run-*.wandb"))
    found = sorted({p.resolve() for group in candidates for p in group if p.is_file()})
    if not found:
        raise FileNotFoundError(f"no offline-run-*/run-*.wandb file under {root}")
    if len(found) > 1:
        listing = "\n  ".join(str(p) for p in found)
        raise ValueError(f"{len(found)} offline W&B run files under {root}:\n  {listing}")
    return found[0]


def find_run_files(wandb_dir: str | Path) -> list[Path]:
    """Every ``offline-run-*/run-*.wandb`` file at any depth under ``wandb_dir``, in the order
    ``wandb sync`` uploads the files of one run: by the start time in their ``run`` record.

    A resumed offline run writes a second folder with the same run id (``offline-run-<time>-<id>``,
    with a ``-1`` suffix when both started in the same second), so folder names alone do not
    give the order. Read the files once their runs have finished (:func:`wait_for_exit_record`):
    a file still being written may not hold its ``run`` record yet. Raises
    ``FileNotFoundError`` if there is none.
    """
    root = Path(wandb_dir)
    found = {p.resolve() for p in root.rglob("offline-run-*/run-*.wandb") if p.is_file()}
    if root.name.startswith("offline-run-"):
        found |= {p.resolve() for p in root.glob("run-*.wandb") if p.is_file()}
    if not found:
        raise FileNotFoundError(f"no offline-run-*/run-*.wandb file under {root}")
    start = {path: run_record(path).start_time.ToNanoseconds() for path in found}
    return sorted(found, key=lambda path: (start[path], str(path)))


def run_record(path: str | Path) -> pb.RunRecord:
    """The file's first ``run`` record: ``run_id``, ``start_time``, and ``resume`` (true when
    ``wandb.init`` was called with ``resume="allow"`` or ``"must"``, as a resumed run is)."""
    for record in read_records(path):
        if record.WhichOneof("record_type") == "run":
            return record.run
    raise WandbLogError(f"no run record in {path}")


def _item_key(item: pb.HistoryItem | pb.ConfigItem) -> str:
    # ``nested_key`` is used instead of ``key`` for values addressed by a path; W&B shows such
    # metrics joined with "." (as the public API's flattened history does).
    return ".".join(item.nested_key) if item.nested_key else item.key


def _history_value(item: pb.HistoryItem) -> Any:
    if item.value_json:
        return json.loads(item.value_json)
    # Typed encoding (setting ``x_history_value_encoding="typed"``): a oneof instead of JSON.
    kind = item.WhichOneof("value")
    if kind is None or kind == "none":
        return None
    if kind == "json":
        return json.loads(item.json)
    return getattr(item, kind)


def history_rows(path: str | Path, *, internal: bool = False) -> list[dict[str, Any]]:
    """One dict per ``history`` record, ``{key: value}`` with values decoded from JSON.

    Keys with slashes (``charts/episodic_return``) are kept as logged. Each row has ``_step``
    (W&B's own step, ``record.history.step.num``); other keys starting with ``_`` (``_runtime``,
    ``_timestamp``, ...) are dropped unless ``internal=True``.
    """
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in record.history.item:
            key = _item_key(item)
            if internal or not key.startswith("_"):
                row[key] = _history_value(item)
        if "_step" not in row and record.history.HasField("step"):
            row["_step"] = record.history.step.num
        rows.append(row)
    return rows


def _apply_config(config: dict[str, Any], update: pb.ConfigRecord) -> None:
    for item in update.update:
        config[_item_key(item)] = json.loads(item.value_json)
    for item in update.remove:
        config.pop(_item_key(item), None)


def run_info(path: str | Path, *, internal: bool = False) -> dict[str, Any]:
    """The run's identity and config as recorded in its ``run`` record.

    Returns ``project``, ``entity``, ``group``, ``job_type``, ``name`` (the display name, "" if
    none was given: offline runs get no generated name), ``run_id``, ``tags`` and ``config``.
    ``config`` starts from the ``run`` record and applies later ``config`` records
    (``run.config.update(...)`` after init) in order; W&B's own ``_wandb`` entry is dropped
    unless ``internal=True``.
    """
    records = read_records(path)
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    if not runs:
        raise WandbLogError(f"no run record in {path}")
    run = runs[0]
    config: dict[str, Any] = {}
    _apply_config(config, run.config)
    for record in records:
        if record.WhichOneof("record_type") == "config":
            _apply_config(config, record.config)
    if not internal:
        config.pop("_wandb", None)
    return {
        "project": run.project,
        "entity": run.entity,
        "group": run.run_group,
        "job_type": run.job_type,
        "name": run.display_name,
        "run_id": run.run_id,
        "tags": list(run.tags),
        "config": config,
    }
