"""Round-trip real offline W&B runs through ``tests/wandb_records.py``.

Each wandb test runs with an isolated environment (offline, silent, no console capture, no system
monitor / git / code / requirements capture, no inherited run identity or API key) and under a
SIGALRM guard so that a stuck ``wandb.init`` or ``finish`` fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import math
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

wandb = pytest.importorskip("wandb")

from wandb_records import (  # noqa: E402
    BLOCK_SIZE,
    FIRST,
    FULL,
    LAST,
    MIDDLE,
    WandbLogError,
    find_run_file,
    find_run_files,
    history_rows,
    iter_payloads,
    read_records,
    run_info,
    run_record,
    wait_for_exit_record,
)

GUARD_SECONDS = 120

# Variables that would change where or as what the run is recorded if inherited from the shell.
_INHERITED = (
    "WANDB_API_KEY",
    "WANDB_IDENTITY_TOKEN_FILE",
    "WANDB_BASE_URL",
    "WANDB_ENTITY",
    "WANDB_PROJECT",
    "WANDB_RUN_ID",
    "WANDB_RESUME",
    "WANDB_RUN_GROUP",
    "WANDB_JOB_TYPE",
    "WANDB_NAME",
    "WANDB_NOTES",
    "WANDB_TAGS",
    "WANDB_SWEEP_ID",
    "WANDB_CONFIG_PATHS",
)


def fast_offline_settings() -> wandb.Settings:
    """Offline settings that never prompt, print or wait on the network (wandb 0.31)."""
    return wandb.Settings(
        mode="offline",
        console="off",  # no stdout/stderr redirection (it fights pytest's capture)
        silent=True,
        x_disable_stats=True,  # no system-metrics monitor (wandb-symon)
        x_disable_meta=True,  # no environment/metadata probe
        x_disable_machine_info=True,
        disable_git=True,
        disable_code=True,
        save_code=False,
        x_save_requirements=False,  # no requirements.txt (pip metadata scan)
        disable_job_creation=True,
        sagemaker_disable=True,
        init_timeout=60.0,
        x_service_wait=60.0,  # wait for the wandb-core process to start
        finish_timeout=60.0,
        reinit="create_new",  # never hand back a run leaked by an earlier test
    )


def _alarm(signum, frame):  # pragma: no cover - only runs when something hangs
    raise TimeoutError(f"wandb test exceeded {GUARD_SECONDS}s (hung?)")


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An isolated offline W&B environment rooted at ``tmp_path``; yields the run ``dir``."""
    for name in _INHERITED:
        monkeypatch.delenv(name, raising=False)
    run_dir = tmp_path / "runs"
    run_dir.mkdir()
    config_dir = tmp_path / "wandb-config"  # isolates ~/.config/wandb/settings
    config_dir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_DIR", str(run_dir))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(config_dir))
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "60")
    monkeypatch.setenv("WANDB__SERVICE_WAIT", "60")
    monkeypatch.setenv("WANDB__DISABLE_STATS", "true")
    monkeypatch.chdir(tmp_path)  # anything written relative to the cwd stays in tmp_path

    use_alarm = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if use_alarm:
        previous = signal.signal(signal.SIGALRM, _alarm)
        earlier_alarm = signal.alarm(GUARD_SECONDS)  # 0 unless someone else had one pending
    try:
        yield run_dir
    finally:
        try:
            if wandb.run is not None:
                wandb.run.finish()
            wandb.teardown()  # stop wandb-core so no state leaks into other tests
        finally:
            if use_alarm:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, previous)
                if earlier_alarm:
                    signal.alarm(earlier_alarm)


def _core_inspect(path: Path) -> list[dict] | None:
    """wandb-core's own reading of the file (``wandb leet inspect --json``), if available."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_offline_run_round_trip(offline_wandb: Path, record_property) -> None:
    config = {"lr": 3e-4, "env_id": "Pendulum-v1", "seed": 7, "net": {"hidden": [64, 64]}}
    logged = [
        {"global_step": 0, "charts/episodic_return": -1234.5, "losses/actor": 0.25},
        {"global_step": 2048, "charts/episodic_return": -987.125, "losses/actor": -0.1},
        {"global_step": 4096, "charts/episodic_return": -150.0, "charts/SPS": 812},
        {"global_step": 8192, "losses/grad_var/score": 3.5e-7, "losses/grad_var/pathwise": 1e-9},
    ]

    t0 = time.perf_counter()
    run = wandb.init(
        mode="offline",
        dir=offline_wandb,
        project="rlgrad-test",
        group="g",
        job_type="train",
        name="round-trip",
        config=config,
        settings=fast_offline_settings(),
    )
    t_init = time.perf_counter() - t0
    # Charts use global_step as their x-axis. step_sync (on by default with step_metric) copies
    # the last global_step into rows logged without one.
    run.define_metric("global_step")
    run.define_metric("*", step_metric="global_step")
    for row in logged:
        run.log(row)
    run.log({"charts/late_metric": 1.5})  # no global_step: step_sync fills in 8192
    run.config.update({"total_timesteps": 8192})
    run_id = run.id
    t0 = time.perf_counter()
    run.finish()
    t_finish = time.perf_counter() - t0
    record_property("wandb_init_s", round(t_init, 3))
    record_property("wandb_finish_s", round(t_finish, 3))

    path = find_run_file(offline_wandb)
    t0 = time.perf_counter()
    records = wait_for_exit_record(path)  # finish() may return before the file is flushed
    record_property("wandb_flush_wait_s", round(time.perf_counter() - t0, 3))
    assert path.parent.name.startswith("offline-run-") and path.name == f"run-{run_id}.wandb"
    assert path.read_bytes()[:7] == b":W&B\xe1\xbe\x00"

    expected = [{**row, "_step": i} for i, row in enumerate(logged)]
    expected.append({"charts/late_metric": 1.5, "global_step": 8192, "_step": len(logged)})
    assert history_rows(path) == expected

    internal = history_rows(path, internal=True)
    assert all({"_timestamp", "_runtime", "_step"} <= row.keys() for row in internal)

    assert run_info(path) == {
        "project": "rlgrad-test",
        "entity": "",
        "group": "g",
        "job_type": "train",
        "name": "round-trip",
        "run_id": run_id,
        "tags": [],
        "config": {**config, "total_timesteps": 8192},
    }
    assert "_wandb" in run_info(path, internal=True)["config"]

    assert [r.SerializeToString() for r in read_records(path)] == [
        r.SerializeToString() for r in records
    ]
    kinds = [r.WhichOneof("record_type") for r in records]
    assert kinds[0] == "header" and kinds[1] == "run" and kinds[-1] == "exit"
    assert records[-1].exit.exit_code == 0
    metrics = [r.metric for r in records if r.WhichOneof("record_type") == "metric"]
    assert any(m.glob_name == "*" and m.step_metric == "global_step" for m in metrics)

    # Cross-check against wandb-core's own reader of the same file.
    core = _core_inspect(path)
    if core is None:
        pytest.skip("`wandb leet inspect --json` unavailable; own-reader checks passed")
    assert [r["type"] for r in core] == kinds
    core_history = [r["history"]["item"] for r in core if r["type"] == "history"]
    assert [{k: v for k, v in h.items() if not k.startswith("_")} for h in core_history] == [
        {k: v for k, v in row.items() if k != "_step"} for row in expected
    ]


def test_explicit_step_semantics(offline_wandb: Path) -> None:
    """What ``run.log(..., step=s)`` records: why notes recommend define_metric instead."""
    run = wandb.init(dir=offline_wandb, project="rlgrad-test", settings=fast_offline_settings())
    run.log({"a": 1.0}, step=100)
    run.log({"b": 2.0}, step=100)  # same step: merged into one row
    run.log({"a": 3.0}, step=200)
    run.log({"a": 4.0}, step=150)  # step went back: dropped with a warning
    run.log({"c": 5.0}, step=300)
    run.finish()
    path = find_run_file(offline_wandb)
    wait_for_exit_record(path)
    assert history_rows(path) == [
        {"a": 1.0, "b": 2.0, "_step": 100},
        {"a": 3.0, "_step": 200},
        {"c": 5.0, "_step": 300},
    ]


def test_large_records_span_blocks(offline_wandb: Path) -> None:
    """Records longer than a 32 KiB block are split FIRST/MIDDLE.../LAST; read them whole."""
    big = "".join(chr(ord("a") + i % 26) for i in range(3 * BLOCK_SIZE + 123))
    run = wandb.init(
        dir=offline_wandb,
        project="rlgrad-test",
        config={"blob": big},
        settings=fast_offline_settings(),
    )
    for i in range(3):
        run.log({"text": big[i:], "x": float(i)})
    run.finish()
    path = find_run_file(offline_wandb)
    wait_for_exit_record(path)
    assert path.stat().st_size > 4 * BLOCK_SIZE
    assert run_info(path)["config"] == {"blob": big}
    assert history_rows(path) == [{"text": big[i:], "x": i, "_step": i} for i in range(3)]


def test_a_resumed_offline_run_is_a_second_folder_with_the_same_id(offline_wandb: Path) -> None:
    """Offline, ``wandb.init(id=ID, resume="allow")`` cannot append to the first folder: it
    writes another one (same second: a ``-1`` suffix) whose run record says ``resume``.
    ``wandb sync`` uploads the files of one id in order of start time, as one run;
    find_run_files gives that order, and the rows taken in it are each logged step once."""
    for steps, resume in (([0, 1, 2], None), ([3, 4], "allow")):
        run = wandb.init(
            dir=offline_wandb,
            project="rlgrad-test",
            id="resumed1",
            resume=resume,
            settings=fast_offline_settings(),
        )
        run.define_metric("global_step")
        run.define_metric("*", step_metric="global_step")
        for step in steps:
            run.log({"global_step": step, "x": float(step)})
        run.finish()
    for path in offline_wandb.rglob("offline-run-*/run-*.wandb"):
        wait_for_exit_record(path)  # finish() may return before the file is flushed
    files = find_run_files(offline_wandb)
    assert len(files) == 2 and all(p.parent.name.startswith("offline-run-") for p in files)
    with pytest.raises(ValueError, match="2 offline"):
        find_run_file(offline_wandb)
    first, second = map(run_record, files)
    assert first.run_id == second.run_id == "resumed1"
    assert (first.resume, second.resume) == (False, True)
    assert first.start_time.ToNanoseconds() <= second.start_time.ToNanoseconds()
    rows = [row for path in files for row in history_rows(path)]
    assert [(row["global_step"], row["_step"]) for row in rows] == [
        (0, 0), (1, 1), (2, 2), (3, 0), (4, 1),  # W&B's _step restarts in the second folder
    ]  # fmt: skip
    assert find_run_files(files[1].parent) == [files[1]]


# --- Framing edge cases on synthetic files (an independent minimal writer of the format) ---


def _chunk(kind: int, payload: bytes) -> bytes:
    crc = zlib.crc32(bytes([kind]) + payload) & 0xFFFFFFFF
    return struct.pack("<IHB", crc, len(payload), kind) + payload


def _write_log(records: list[bytes]) -> bytes:
    """LevelDB-log framing with the W&B header, as wandb-core writes it."""
    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for rec in records:
        first = True
        while True:
            left = BLOCK_SIZE - len(out) % BLOCK_SIZE
            if left < 7:
                out += b"\0" * left
                left = BLOCK_SIZE
            room = left - 7
            piece, rec = rec[:room], rec[room:]
            if first:
                kind = FULL if not rec else FIRST
            else:
                kind = LAST if not rec else MIDDLE
            out += _chunk(kind, piece)
            first = False
            if not rec:
                break
    return bytes(out)


def test_framing_synthetic_edge_cases() -> None:
    records = [
        b"x" * (BLOCK_SIZE - 7 - 7 - 3),  # leaves a 3-byte zero trailer in block 0
        b"y" * (BLOCK_SIZE - 7 - 7),  # leaves exactly 7 bytes in block 1 ...
        b"z" * 70000,  # ... so this starts with an empty FIRST chunk, then MIDDLE, LAST
        b"",  # an empty FULL record
        bytes(range(256)) * 300,
    ]
    data = _write_log(records)
    assert data[BLOCK_SIZE - 3 : BLOCK_SIZE] == b"\0\0\0"
    assert struct.unpack_from("<IHB", data, 2 * BLOCK_SIZE - 7)[1:] == (0, FIRST)
    assert list(iter_payloads(data)) == records

    # Zero-filled tail (preallocated file) is skipped like LevelDB readers do.
    assert list(iter_payloads(data + b"\0" * 100)) == records

    # A torn tail raises when strict, and is ignored otherwise.
    torn = data[:-5]
    with pytest.raises(WandbLogError):
        list(iter_payloads(torn))
    assert list(iter_payloads(torn, strict=False)) == records[:-1]

    corrupt = bytearray(data)
    corrupt[20] ^= 0xFF  # inside the first record's payload
    with pytest.raises(WandbLogError, match="checksum"):
        list(iter_payloads(bytes(corrupt)))

    with pytest.raises(WandbLogError, match="magic"):
        list(iter_payloads(b":W&B\x00\x00\x00" + data[7:]))
    with pytest.raises(WandbLogError, match="ident"):
        list(iter_payloads(b"LEVL" + data[4:]))


def test_history_typed_values_and_nested_keys(tmp_path: Path) -> None:
    from wandb.proto import wandb_internal_pb2 as pb

    header = pb.Record(header=pb.HeaderRecord())
    history = pb.Record()
    history.history.step.num = 4
    item = history.history.item.add()
    item.nested_key.extend(["charts", "episodic_return"])
    item.value_json = "NaN"
    item = history.history.item.add()
    item.key = "global_step"
    item.integer = 512  # typed encoding, no value_json
    item = history.history.item.add()
    item.key = "flag"
    item.boolean = True
    path = tmp_path / "run-x.wandb"
    path.write_bytes(_write_log([header.SerializeToString(), history.SerializeToString()]))
    (row,) = history_rows(path)
    assert row.keys() == {"charts.episodic_return", "global_step", "flag", "_step"}
    assert math.isnan(row["charts.episodic_return"])
    assert (row["global_step"], row["flag"], row["_step"]) == (512, True, 4)


def test_find_run_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        find_run_file(tmp_path)
    a = tmp_path / "wandb" / "offline-run-20250101_000000-aaaa" / "run-aaaa.wandb"
    a.parent.mkdir(parents=True)
    a.write_bytes(b"")
    (tmp_path / "wandb" / "latest-run").symlink_to(a.parent)
    assert find_run_file(tmp_path) == a.resolve()
    assert find_run_file(a.parent) == a.resolve()
    b = tmp_path / "wandb" / "offline-run-20250101_000001-bbbb" / "run-bbbb.wandb"
    b.parent.mkdir()
    b.write_bytes(b"")
    with pytest.raises(ValueError, match="2 offline"):
        find_run_file(tmp_path)


def test_wait_for_exit_record_times_out(tmp_path: Path) -> None:
    from wandb.proto import wandb_internal_pb2 as pb

    path = tmp_path / "run-x.wandb"
    path.write_bytes(_write_log([pb.Record(header=pb.HeaderRecord()).SerializeToString()]))
    with pytest.raises(TimeoutError):
        wait_for_exit_record(path, timeout=0.1)
    exit_record = pb.Record()
    exit_record.exit.exit_code = 0
    header = pb.Record(header=pb.HeaderRecord()).SerializeToString()
    path.write_bytes(_write_log([header, exit_record.SerializeToString()]))
    assert [r.WhichOneof("record_type") for r in wait_for_exit_record(path)] == ["header", "exit"]
