"""The W&B sink: an offline run of `rlgrad train` holds the metrics, config and grouping; the
run prints where W&B writes (the offline folder, or the URL online); a resumed offline run is
one run for ``wandb sync RUN_DIR/wandb/offline-run-*``."""

from __future__ import annotations

import glob
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import TINY_OVERRIDES
from wandb_records import (
    find_run_file,
    find_run_files,
    history_rows,
    run_info,
    run_record,
    wait_for_exit_record,
)

from rlgrad.logging import resolve_wandb_mode

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sac_pendulum.yaml"
OFFLINE_LINE = re.compile(
    r"rlgrad: W&B offline run: (?P<folder>\S+) \(upload: wandb sync (?P<pattern>\S+)\)"
)
EXPECTED = {
    "charts/episodic_return", "charts/episodic_length", "charts/sps", "losses/critic",
    "losses/actor", "losses/alpha", "charts/alpha", "eval/return_mean", "eval/return_std",
}  # fmt: skip


def test_offline_wandb_run_holds_the_logged_metrics(cli, tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_RUN_GROUP", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run_dir = tmp_path / "run"
    code, _, err = cli(
        "train", str(CONFIG), "total_steps=400", "agent.learning_starts=100",
        "agent.batch_size=32", "agent.hidden_sizes=[32,32]", "eval.episodes=2",
        "eval.interval=0", "logging.interval=100", "logging.wandb=auto",
        "logging.group=test-group", "logging.project=rlgrad-test", "--run-dir", str(run_dir),
        "--quiet",
    )  # fmt: skip
    assert code == 0, err

    path = find_run_file(run_dir / "wandb")
    wait_for_exit_record(path)
    rows = history_rows(path)
    logged = {key for row in rows for key in row}
    assert EXPECTED <= logged
    assert all("global_step" in row for row in rows)

    jsonl = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final_eval = [r for r in jsonl if "eval/return_mean" in r][-1]
    wandb_eval = [r for r in rows if "eval/return_mean" in r][-1]
    assert wandb_eval["eval/return_mean"] == final_eval["eval/return_mean"]
    assert wandb_eval["global_step"] == final_eval["global_step"] == 400

    info = run_info(path)
    assert info["project"] == "rlgrad-test"
    assert info["group"] == "test-group"
    assert info["config"]["agent"]["name"] == "sac"
    assert info["config"]["total_steps"] == 400


def test_auto_mode_is_offline_without_a_key_and_online_with_one(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert resolve_wandb_mode("auto") == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password abc\n")
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"
    assert resolve_wandb_mode("offline") == "offline"


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B offline (WANDB_MODE), with no key, run identity or user settings from the shell."""
    for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_RUN_GROUP", "WANDB_RUN_ID", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def _train(cli, run_dir: Path, *overrides: str) -> str:
    """A tiny run into ``run_dir`` (not --quiet, so it prints its start lines); its stdout."""
    args = [*TINY_OVERRIDES, "logging.wandb=auto", "logging.interval=100", *overrides]
    code, out, err = cli("train", CONFIG, *args, "--run-dir", run_dir)
    assert code == 0, err
    return out


def _as_in_jsonl(value: object) -> object:
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def _jsonl(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_resumed_offline_run_prints_its_folders_and_syncs_as_one_run(cli, tmp_path, offline):
    """Each start prints the offline folder it writes (it exists afterwards) and the one
    ``wandb sync`` command. A resume writes a second folder with the same run id; taken in the
    order ``wandb sync`` takes them (start time), the two hold every row of metrics.jsonl
    exactly once, and the second is marked as resuming the first."""
    run_dir = tmp_path / "run"
    first = _train(cli, run_dir, "total_steps=300")
    code, second, err = cli("train", "--resume", run_dir, "total_steps=600")
    assert code == 0, err

    printed, patterns = [], set()
    for out in (first, second):
        lines = out.splitlines()
        assert lines[0].startswith(f"rlgrad: sac on Pendulum-v1 into {run_dir} (kernels: ")
        match = OFFLINE_LINE.fullmatch(lines[1])
        assert match, lines[1]
        printed.append(Path(match["folder"]))
        patterns.add(match["pattern"])
    assert all(folder.is_dir() for folder in printed)
    assert patterns == {f"{run_dir / 'wandb'}/offline-run-*"}
    assert sorted(glob.glob(patterns.pop())) == sorted(map(str, printed))  # one command
    for folder in printed:
        (path,) = folder.glob("run-*.wandb")
        wait_for_exit_record(path)  # finish() may return before the file is flushed
    files = find_run_files(run_dir / "wandb")
    assert [path.parent for path in files] == [folder.resolve() for folder in printed]
    first_record, second_record = map(run_record, files)
    assert first_record.run_id == second_record.run_id
    assert (first_record.resume, second_record.resume) == (False, True)
    # W&B's own _step restarts in each folder (charts use global_step); metrics.jsonl writes
    # NaN/Inf as strings
    rows = [
        {key: _as_in_jsonl(value) for key, value in row.items() if key != "_step"}
        for path in files
        for row in history_rows(path)
    ]
    assert rows == _jsonl(run_dir)
    steps = [row["global_step"] for row in rows if "charts/sps" in row]
    assert steps == list(range(100, 601, 100))  # each step once: no duplicate at the resume
    assert [row["global_step"] for row in rows if "eval/return_mean" in row] == [300, 600]


class FakeRun:
    """What WandbSink uses of an online ``wandb.Run``, without a network."""

    def __init__(self, **kwargs):
        self.init_kwargs, self.logged, self.finished = kwargs, [], False
        self.id = "fake1234"
        self.url = f"https://wandb.ai/someone/{kwargs['project']}/runs/{self.id}"
        self.settings = SimpleNamespace(sync_dir="never read online")

    def define_metric(self, *args, **kwargs) -> None:
        pass

    def log(self, row: dict) -> None:
        self.logged.append(row)

    def finish(self) -> None:
        self.finished = True


def test_an_online_run_prints_its_url(cli, tmp_path, monkeypatch):
    import wandb

    runs: list[FakeRun] = []

    def fake_init(**kwargs) -> FakeRun:
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    monkeypatch.setattr(wandb, "init", fake_init)
    out = _train(cli, tmp_path / "run", "logging.wandb=online", "logging.project=rlgrad-test")
    (run,) = runs
    assert run.init_kwargs["mode"] == "online" and run.finished
    assert (
        out.splitlines()[1] == "rlgrad: W&B run: https://wandb.ai/someone/rlgrad-test/runs/fake1234"
    )
    assert [row["global_step"] for row in run.logged if "eval/return_mean" in row] == [300]
