"""Nothing lost, nothing silently wrong: the run directory's data-integrity guarantees.

* One writer per run directory: a run holds ``RUN_DIR/.lock`` (``flock``) for its lifetime; a
  second ``--resume``/``--overwrite`` stops with one line naming the holder's PID and touches
  nothing; a run killed with SIGKILL leaves no stale lock.
* Checkpoints carry a SHA-256: a flipped bit anywhere is a one-line "corrupt" error.
* A resume never pads metrics.jsonl: one shorter than its checkpoint recorded is refused, and
  it is fsync-ed before every checkpoint that records its length.
* Temporary files of killed saves are removed when the next run starts in the directory.
* A study's name cannot lead its folder out of the output folder.
* Non-finite observations and rewards never enter a normaliser or a buffer (the vector step is
  dropped and counted in ``env/nonfinite_transitions``); no checkpoint is written from
  non-finite state; a non-finite final evaluation is an error, not a result.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from conftest import (
    CONFIGS,
    REPO,
    SAC_PENDULUM,
    CliResult,
    assert_one_line_error,
    run_tiny_training,
    snapshot,
    tiny_train_args,
)

from rlgrad.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from rlgrad.config import ConfigError
from rlgrad.logging import JsonlSink
from rlgrad.run_lock import LOCK_FILE, RunDirInUse, hold_run_dir, holder_pid
from rlgrad.study_spec import load_spec
from rlgrad.toy_envs import PointMassEnv

Cli = Callable[..., CliResult]
CHECKPOINT = Path("checkpoints") / "latest.pt"
ENV = {**os.environ, "WANDB_MODE": "disabled"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny finished SAC run with checkpoints at 100 and 200 (copy it before changing it)."""
    run_dir = tmp_path_factory.mktemp("integrity") / "sac"
    code, _, err = run_tiny_training(
        run_dir, "total_steps=200", "checkpoint.interval=100", "logging.interval=20"
    )
    assert code == 0, err
    return run_dir


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


# -- one writer per run directory -------------------------------------------------------------


def start_cli(*args: str | Path) -> subprocess.Popen[str]:
    """``python -m rlgrad.cli ARGS`` in the background."""
    command = [sys.executable, "-m", "rlgrad.cli", *map(str, args)]
    return subprocess.Popen(
        command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run exited with {proc.returncode}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the run")
        time.sleep(0.05)


def checkpoint_step(run_dir: Path) -> int:
    path = run_dir / CHECKPOINT
    return load_checkpoint(path)["global_step"] if path.is_file() else -1


def assert_refused_in_use(cli: Cli, run_dir: Path, pid: int, *args: str | Path) -> None:
    before = snapshot(run_dir)
    code, out, err = cli(*args)
    assert code == 2, (code, err)
    assert out == ""
    assert_one_line_error(
        err,
        f"{run_dir} is in use by another rlgrad process (pid {pid})",
        "wait for it or use another --run-dir",
    )
    assert snapshot(run_dir) == before, "a refused command changed the run directory"


def test_a_running_run_has_its_directory_to_itself_and_sigkill_leaves_no_stale_lock(
    cli: Cli, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    long_run = tiny_train_args(run_dir, "total_steps=3000", "checkpoint.interval=50")
    first = start_cli(*long_run)
    try:
        wait_for(lambda: holder_pid(run_dir) == first.pid and checkpoint_step(run_dir) > 0, first)
        os.kill(first.pid, signal.SIGSTOP)  # it keeps the lock but stops changing files
        step = checkpoint_step(run_dir)
        # Each of these would change the directory at once if it were let in.
        assert_refused_in_use(
            cli, run_dir, first.pid, "train", "--resume", run_dir, "total_steps=4000", "--quiet"
        )
        quick_new_run = tiny_train_args(run_dir, "total_steps=10")
        assert_refused_in_use(cli, run_dir, first.pid, *quick_new_run, "--overwrite")
        assert_refused_in_use(cli, run_dir, first.pid, *quick_new_run)
    finally:
        first.kill()  # SIGKILL, stopped or not
        first.wait()
    assert holder_pid(run_dir) == first.pid, "the killed run's lock file should still be there"

    # A --resume takes the dead run's lock over; a second --resume of it is refused.
    second = start_cli("train", "--resume", run_dir, "--quiet")
    try:
        wait_for(
            lambda: holder_pid(run_dir) == second.pid and checkpoint_step(run_dir) > step, second
        )
        os.kill(second.pid, signal.SIGSTOP)
        step = checkpoint_step(run_dir)
        assert_refused_in_use(
            cli, run_dir, second.pid, "train", "--resume", run_dir, "total_steps=4000", "--quiet"
        )
    finally:
        second.kill()
        second.wait()

    code, out, err = cli("train", "--resume", run_dir, "--quiet")
    assert code == 0, err
    assert out.startswith("done: 3000 steps")
    assert not (run_dir / LOCK_FILE).exists(), "a finished run leaves no lock file"


def test_the_lock_names_its_holder_and_is_reentrant_only_in_its_thread(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom rlgrad.run_lock import hold_run_dir\n"
            "with hold_run_dir(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()",
            str(run_dir),
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirInUse) as info:
            with hold_run_dir(run_dir):
                pass
        assert info.value.pid == holder.pid
        assert str(info.value) == (
            f"{run_dir} is in use by another rlgrad process (pid {holder.pid}); wait for it "
            "or use another --run-dir"
        )
    finally:
        holder.communicate("")  # EOF: it releases the lock and exits
    assert holder.returncode == 0
    assert not (run_dir / LOCK_FILE).exists()

    (run_dir / LOCK_FILE).write_text("999999999\n")  # left by a run killed with SIGKILL
    with hold_run_dir(run_dir), hold_run_dir(run_dir):  # re-entrant in this thread
        assert holder_pid(run_dir) == os.getpid()
        errors: list[BaseException] = []

        def other_thread() -> None:
            try:
                with hold_run_dir(run_dir):
                    pass
            except RunDirInUse as exc:
                errors.append(exc)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert len(errors) == 1
    assert not (run_dir / LOCK_FILE).exists()


# -- checksummed checkpoints -------------------------------------------------------------------


def checkpoint_state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "agent": {"w": torch.randn(64, 32, generator=g), "steps": torch.arange(10)},
        "rng": {"python": [3, 1, 4], "seed": 7},
        "global_step": 1234,
        "name": "sac",
    }


def test_a_flipped_bit_anywhere_is_a_one_line_corrupt_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "latest.pt", checkpoint_state())
    data = path.read_bytes()
    rng = random.Random(0)
    positions = rng.sample(range(len(data)), 50)
    for position in positions:
        damaged = bytearray(data)
        damaged[position] ^= 1 << rng.randrange(8)
        copy = tmp_path / f"flipped-{position}.pt"
        copy.write_bytes(damaged)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(copy)
        message = str(info.value)
        assert len(message.splitlines()) == 1, message
        assert f"{copy} is corrupt" in message, message


def test_checkpoints_stay_plain_torch_files(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "latest.pt", checkpoint_state())
    state = torch.load(path, weights_only=True)
    assert state["format"] == FORMAT_VERSION and torch.equal(
        state["agent"]["w"], checkpoint_state()["agent"]["w"]
    )


def test_checkpoints_without_a_checksum_are_refused(tmp_path: Path) -> None:
    old = tmp_path / "old.pt"
    torch.save({"format": 1, **checkpoint_state()}, old)
    with pytest.raises(CheckpointError, match="older rlgrad without a checksum"):
        load_checkpoint(old)
    stripped = tmp_path / "stripped.pt"  # the current format with its checksum cut off
    torch.save({"format": FORMAT_VERSION, **checkpoint_state()}, stripped)
    with pytest.raises(CheckpointError, match="corrupt.*checksum is missing"):
        load_checkpoint(stripped)


@pytest.mark.parametrize("command", ["resume", "eval"])
def test_a_flipped_bit_in_a_run_checkpoint_stops_the_cli(
    cli: Cli, run_copy: Path, command: str
) -> None:
    path = run_copy / CHECKPOINT
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(data)
    before = snapshot(run_copy)
    args = ["train", "--resume", run_copy] if command == "resume" else ["eval", run_copy]
    code, out, err = cli(*args, "--quiet") if command == "resume" else cli(*args)
    assert code == 2, err
    assert_one_line_error(err, f"{path} is corrupt", "checksum")
    assert snapshot(run_copy) == before


# -- metrics.jsonl is never padded ------------------------------------------------------------


def test_a_resume_refuses_metrics_shorter_than_its_checkpoint_recorded(
    cli: Cli, run_copy: Path
) -> None:
    recorded = load_checkpoint(run_copy / CHECKPOINT)["logger"]["jsonl_bytes"]
    metrics = run_copy / "metrics.jsonl"
    assert metrics.stat().st_size == recorded > 100
    with open(metrics, "r+b") as f:  # a torn write: the end of the file was lost
        f.truncate(recorded - 37)
    before = snapshot(run_copy)
    code, out, err = cli("train", "--resume", run_copy, "--quiet")
    assert code == 2, err
    assert_one_line_error(
        err, f"{metrics} is {recorded - 37} bytes, shorter than the {recorded}", "--overwrite"
    )
    assert snapshot(run_copy) == before
    assert b"\0" not in metrics.read_bytes()


def test_jsonl_sink_truncates_but_never_extends(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"global_step": 1}\n{"global_step": 2}\n')
    with pytest.raises(CheckpointError, match="shorter than the 100"):
        JsonlSink(path, truncate_to=100)
    assert path.read_bytes() == b'{"global_step": 1}\n{"global_step": 2}\n'
    sink = JsonlSink(path, truncate_to=19)
    sink.write({"x": 1.0}, 3)
    assert sink.position() == path.stat().st_size
    sink.close()
    assert path.read_bytes() == b'{"global_step": 1}\n{"global_step": 3, "x": 1.0}\n'


def test_metrics_are_fsynced_before_each_checkpoint_that_records_their_length(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", Path(path).name, os.fstat(fd).st_size))
        real_fsync(fd)

    def spy_replace(src, dst) -> None:
        events.append(("replace", Path(dst).name, 0))
        real_replace(src, dst)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the fsync-ed files")
    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    run_dir = tmp_path / "run"
    code, _, err = cli(
        *tiny_train_args(
            run_dir, "total_steps=300", "checkpoint.interval=100", "logging.interval=20"
        )
    )
    monkeypatch.undo()
    assert code == 0, err
    saves = [i for i, event in enumerate(events) if event[:2] == ("replace", "latest.pt")]
    assert len(saves) == 4  # at 100, 200, 300 and after the final evaluation
    previous = -1
    for save in saves:
        synced = [e for e in events[previous + 1 : save] if e[:2] == ("fsync", "metrics.jsonl")]
        assert synced, f"checkpoint {saves.index(save)} was written without syncing the metrics"
        previous = save
    final = load_checkpoint(run_dir / CHECKPOINT)["logger"]["jsonl_bytes"]
    assert synced[-1][2] == final == (run_dir / "metrics.jsonl").stat().st_size


# -- orphan temporary files -------------------------------------------------------------------


def test_temporary_files_of_killed_saves_are_removed_at_the_next_start(
    cli: Cli, run_copy: Path
) -> None:
    orphans = [
        run_copy / "checkpoints" / ".latest.pt.k1ll3d00.tmp",
        run_copy / "checkpoints" / ".latest.pt.zz_9ab12.tmp",
        run_copy / ".result.json.tmp",
        run_copy / ".config.yaml.tmp",
    ]
    for orphan in orphans:
        orphan.write_bytes(b"half a checkpoint")
    kept = run_copy / "checkpoints" / "notes.tmp"
    kept.write_text("not rlgrad's")
    (run_copy / "result.json").unlink()  # killed after its final checkpoint: a resume ends it
    code, _, err = cli("train", "--resume", run_copy, "--quiet")
    assert code == 0, err
    assert not [orphan for orphan in orphans if orphan.exists()]
    assert kept.read_text() == "not rlgrad's"
    assert load_checkpoint(run_copy / CHECKPOINT)["global_step"] == 200


# -- study names stay inside the output folder ------------------------------------------------


def write_study(directory: Path, name: str) -> Path:
    spec = {"name": name, "config": str(SAC_PENDULUM), "estimators": {"sac": {}}, "seeds": 1}
    path = directory / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    "name", ["../../x", "/tmp/elsewhere", "a/b", "a\\b", "..", ".", "x/../../y"]
)
def test_a_study_name_must_be_a_plain_folder_name(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    spec = write_study(tmp_path, name)
    with pytest.raises(ConfigError) as info:
        load_spec(spec)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "study key 'name'" in message, message
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("compare", spec)
    assert code == 2
    assert_one_line_error(err, "study key 'name'", "plain folder name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


@pytest.mark.parametrize("name", ["pendulum", "sac vs ppo", "v1.2_run-3"])
def test_plain_study_names_are_accepted(tmp_path: Path, name: str) -> None:
    assert load_spec(write_study(tmp_path, name)).name == name


# -- non-finite observations and rewards ------------------------------------------------------

GLITCHY = "rlgrad-test/GlitchyPointMass-v0"


class GlitchyPointMass(PointMassEnv):
    """PointMass whose observation or reward (``what``) is NaN at its ``at``-th training step
    (counted over the env's life) or, with ``in_eval``, at every step of an evaluation episode
    (evaluation episodes are seeded far above the training seeds 0, 1, …)."""

    def __init__(self, at: int = -1, what: str = "obs", in_eval: bool = False):
        super().__init__()
        self.at, self.what, self.in_eval = at, what, in_eval
        self.steps, self.evaluating = 0, False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.evaluating = seed >= 1000
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if not self.evaluating:
            self.steps += 1
        glitch = self.in_eval if self.evaluating else self.steps == self.at
        if glitch and self.what == "obs":
            obs = np.full_like(obs, np.nan)
        if glitch and self.what == "reward":
            reward = float("nan")
        return obs, reward, terminated, truncated, info


gym.register(GLITCHY, entry_point=GlitchyPointMass, max_episode_steps=25)

PPO_TINY = (
    "train",
    str(CONFIGS / "ppo_pendulum.yaml"),  # 4 envs, observations and rewards normalised
    "total_steps=512",
    "logging.wandb=disabled",
    "logging.interval=64",
    "agent.n_steps=32",
    "agent.batch_size=64",
    "agent.n_epochs=2",
    "eval.episodes=2",
    "eval.interval=0",
)


def finite(state: object) -> bool:
    """Whether every float and floating tensor in a nested checkpoint structure is finite."""
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, float):
        return math.isfinite(state)
    if isinstance(state, dict):
        return all(finite(v) for v in state.values())
    if isinstance(state, list | tuple):
        return all(finite(v) for v in state)
    return True


@pytest.mark.parametrize(
    ("agent", "what", "at", "dropped"),
    [("sac", "obs", 137, 2), ("ppo", "obs", 37, 8), ("ppo", "reward", 37, 4)],
    ids=["sac-obs", "ppo-obs", "ppo-reward"],
)
def test_a_nan_observation_or_reward_is_dropped_and_counted_not_learned(
    cli: Cli, tmp_path: Path, agent: str, what: str, at: int, dropped: int
) -> None:
    """One NaN observation (or reward) at the ``at``-th step of each sub-env (after the first
    logged training metrics), with observation (and
    reward) normalisation: the normalisers, buffers and networks stay finite, the transitions
    it is part of are dropped (an observation is in two: the step reaching it and the step
    leaving it; PPO has 4 sub-envs), counted in env/nonfinite_transitions and warned about,
    and the run ends with a finite result."""
    run_dir = tmp_path / "run"
    glitch = [f"env.id={GLITCHY}", f"env.kwargs={{at: {at}, what: {what}}}"]
    if agent == "sac":
        args = tiny_train_args(run_dir, *glitch, "env.normalize_obs=true", "logging.interval=50")
    else:
        args = [*PPO_TINY, *glitch, "--quiet", "--run-dir", str(run_dir)]
    with pytest.warns(RuntimeWarning, match=f"env {GLITCHY}: non-finite observation or reward"):
        code, out, err = cli(*args)
    assert code == 0, err
    result = json.loads((run_dir / "result.json").read_text())
    assert math.isfinite(result["eval_return_mean"]) and math.isfinite(result["eval_return_std"])
    checkpoint = load_checkpoint(run_dir / CHECKPOINT)
    assert finite(checkpoint["agent"]) and finite(checkpoint["learner"])
    normalisers = [w for w in checkpoint["envs"]["wrappers"] if "obs_rms" in w or "return_rms" in w]
    assert normalisers and all(finite(w.get("obs_rms", w.get("return_rms"))) for w in normalisers)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    counted = [r["env/nonfinite_transitions"] for r in rows if "env/nonfinite_transitions" in r]
    assert counted[0] == 0 and counted[-1] == dropped
    assert all(r["learner/nonfinite_skips"] == 0 for r in rows if "learner/nonfinite_skips" in r)


@pytest.mark.filterwarnings("ignore:.*The reward is a NaN value")  # gymnasium's env checker
def test_a_non_finite_final_evaluation_is_an_error_not_a_result(cli: Cli, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = tiny_train_args(run_dir, f"env.id={GLITCHY}", "env.kwargs={in_eval: true, what: reward}")
    code, out, err = cli(*args)
    assert code == 1
    assert_one_line_error(
        err,
        f"the final evaluation at step 300 on env {GLITCHY} gave non-finite returns [nan, nan]",
        "no result.json was written",
        f"the last good checkpoint is {run_dir / CHECKPOINT}",
    )
    assert not (run_dir / "result.json").exists()
    checkpoint = load_checkpoint(run_dir / CHECKPOINT)
    assert checkpoint["global_step"] == 300 and checkpoint["loop"]["final_returns"] is None


def test_no_checkpoint_is_written_from_non_finite_state(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The actor's weights turn NaN at step 150 (a bug, a bit flip): the checkpoint due at 200
    is refused and the run stops with exit code 1; the one from step 100 stays."""
    from rlgrad.agents.sac import Agent as SacAgent

    update = SacAgent.update

    def poisoned_update(self, global_step: int, measure: bool = False):
        metrics = update(self, global_step, measure)
        if global_step == 150:
            with torch.no_grad():
                next(self.actor.parameters()).fill_(float("nan"))
        return metrics

    monkeypatch.setattr(SacAgent, "update", poisoned_update)
    run_dir = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN actions: NaN observations
        code, out, err = cli(*tiny_train_args(run_dir, "checkpoint.interval=100"))
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith(
        "rlgrad: error: refusing to write a checkpoint at step 200: agent.actor."
    )
    assert "holds NaN or Inf" in line and f"last good checkpoint is {run_dir / CHECKPOINT}" in line
    checkpoint = load_checkpoint(run_dir / CHECKPOINT)
    assert checkpoint["global_step"] == 100 and finite(checkpoint["agent"])
    assert not (run_dir / "result.json").exists()
