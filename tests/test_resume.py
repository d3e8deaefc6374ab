"""Exact resume: a run killed with SIGKILL after a checkpoint and resumed is the same run.

For SAC and PPO: N steps straight vs the same config killed at a step past its checkpoint at
N/2 (rows after the checkpoint already written), then ``rlgrad train --resume``: identical
metrics.jsonl rows (``charts/sps`` aside) and bitwise-identical parameters, optimiser state
and buffers. Also SIGTERM handling, NaN rewards, and ``--resume`` usage errors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import CONFIGS, SAC_PENDULUM, CliResult, assert_one_line_error

from rlgrad.checkpoint import load_checkpoint

SAC_ARGS = (
    str(SAC_PENDULUM),
    "total_steps=600",
    "checkpoint.interval=300",
    "logging.wandb=disabled",
    "logging.interval=50",
    "agent.learning_starts=50",
    "agent.batch_size=32",
    "agent.hidden_sizes=[32,32]",
    "env.normalize_obs=true",
    "env.normalize_reward=true",
    "eval.episodes=2",
    "eval.interval=250",
    "diagnostics.interval=100",
    "diagnostics.batch=16",
    "diagnostics.reference_batch=32",
)
PPO_ARGS = (
    str(CONFIGS / "ppo_pendulum.yaml"),
    "total_steps=1024",
    "checkpoint.interval=400",
    "logging.wandb=disabled",
    "logging.interval=64",
    "agent.n_steps=64",
    "agent.batch_size=64",
    "agent.n_epochs=2",
    "eval.episodes=2",
    "eval.interval=500",
)

# A child process that trains and SIGKILLs itself once the loop passes ``kill_step``: the
# checkpoint before it is on disk, and rows after it are already in metrics.jsonl.
KILLER = """
import os, signal, sys
import rlgrad.logging
kill_step = int(sys.argv[1])
advance = rlgrad.logging.Logger.advance
def advance_then_die(self, step):
    advance(self, step)
    if step >= kill_step:
        os.kill(os.getpid(), signal.SIGKILL)
rlgrad.logging.Logger.advance = advance_then_die
from rlgrad.cli import main
sys.exit(main(sys.argv[2:]))
"""


def metrics_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "charts/sps"} for row in rows]


def tensors(state: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested checkpoint structure, by path."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    else:
        return {}
    found: dict[str, torch.Tensor] = {}
    for key, value in items:
        found.update(tensors(value, f"{prefix}/{key}"))
    return found


def run_killed(run_dir: Path, kill_step: int, args: tuple[str, ...]) -> int:
    command = [sys.executable, "-c", KILLER, str(kill_step), "train", *args, "--quiet"]
    command += ["--run-dir", str(run_dir)]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode


@pytest.mark.parametrize(
    ("args", "kill_step", "checkpoint_step"),
    [
        (SAC_ARGS, 437, 300),
        ((*SAC_ARGS, "agent.actor_estimator=score", "agent.score_baseline=value"), 437, 300),
        (PPO_ARGS, 700, 400),
    ],
    ids=["sac", "sac-score-value", "ppo"],
)
def test_killed_and_resumed_run_equals_a_straight_run(
    cli: Callable[..., CliResult],
    tmp_path: Path,
    args: tuple[str, ...],
    kill_step: int,
    checkpoint_step: int,
) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    code, _, err = cli("train", *args, "--quiet", "--run-dir", straight)
    assert code == 0, err

    assert run_killed(resumed, kill_step, args) == -signal.SIGKILL
    assert load_checkpoint(resumed / "checkpoints" / "latest.pt")["global_step"] == checkpoint_step
    rows_at_kill = metrics_rows(resumed)
    assert max(row["global_step"] for row in rows_at_kill) > checkpoint_step
    assert not (resumed / "result.json").exists()

    code, out, err = cli("train", "--resume", resumed, "--quiet")
    assert code == 0, err
    assert metrics_rows(resumed) == metrics_rows(straight)
    final_straight = load_checkpoint(straight / "checkpoints" / "latest.pt")
    final_resumed = load_checkpoint(resumed / "checkpoints" / "latest.pt")
    a, b = tensors(final_straight["agent"]), tensors(final_resumed["agent"])
    assert a.keys() == b.keys() and len(a) > 4
    for name in a:
        assert torch.equal(a[name], b[name]), name
    opt_a, opt_b = tensors(final_straight["learner"]), tensors(final_resumed["learner"])
    assert opt_a.keys() == opt_b.keys()
    assert all(torch.equal(opt_a[k], opt_b[k]) for k in opt_a)
    assert json.loads((straight / "result.json").read_text()) == json.loads(
        (resumed / "result.json").read_text()
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_and_says_how_to_resume(tmp_path: Path, signum: int) -> None:
    run_dir = tmp_path / "run"
    script = KILLER.replace("signal.SIGKILL", f"signal.{signum.name}").replace(
        "if step >= kill_step:", "if step == kill_step:"
    )
    command = [sys.executable, "-c", script, "120", "train", *SAC_ARGS, "--quiet"]
    command += ["--run-dir", str(run_dir)]
    done = subprocess.run(
        command, env={**os.environ, "WANDB_MODE": "disabled"}, capture_output=True, text=True
    )
    assert done.returncode == 128 + signum, done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert f"{signum.name} at step 120" in message
    assert f"rlgrad train --resume {run_dir}" in message
    assert load_checkpoint(run_dir / "checkpoints" / "latest.pt")["global_step"] == 120
    assert not (run_dir / "result.json").exists()


class NaNRewardAfter(gym.Wrapper):
    """Pendulum whose rewards turn NaN after ``start`` steps (a broken simulator)."""

    def __init__(self, env: gym.Env, start: int):
        super().__init__(env)
        self.start, self.steps = start, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        return obs, float("nan") if self.steps > self.start else reward, terminated, truncated, info


gym.register(
    "rlgrad-test/NaNPendulum-v0",
    entry_point=lambda start=200, **kw: NaNRewardAfter(
        gym.make("Pendulum-v1", **kw).unwrapped, start
    ),
    max_episode_steps=200,
)


def test_nan_rewards_are_skipped_then_stop_the_run_with_the_checkpoint_intact(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    code, _, err = cli(
        "train",
        *SAC_ARGS,
        "env.id=rlgrad-test/NaNPendulum-v0",
        "env.normalize_reward=false",
        "checkpoint.interval=100",
        "learner.max_nonfinite=5",
        "--quiet",
        "--run-dir",
        run_dir,
    )
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert "consecutive non-finite updates" in line and "losses/" not in line
    assert "last in loss 'critic'" in line and "last good checkpoint is" in line
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert 200 <= checkpoint["global_step"] < 600
    actor = tensors(checkpoint["agent"]["actor"])
    assert all(torch.isfinite(t).all() for t in actor.values())
    skips = [
        r["learner/nonfinite_skips"]
        for r in metrics_rows(run_dir)
        if "learner/nonfinite_skips" in r
    ]
    assert skips and not np.isnan(skips).any()


def test_resume_refuses_config_changes_other_than_total_steps(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    code, _, err = cli("train", "--resume", tmp_path, "agent.batch_size=64")
    assert code == 2
    assert_one_line_error(err, "agent.batch_size=64", "total_steps")


def test_resumed_run_logs_to_the_same_wandb_run_id(
    cli: Callable[..., CliResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Online, W&B continues the run with this id; offline it writes a second folder with it."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "run"
    args = [a for a in SAC_ARGS if not a.startswith(("logging.wandb", "total_steps"))]
    code, _, err = cli(
        "train", *args, "total_steps=150", "logging.wandb=offline", "--quiet", "--run-dir", run_dir
    )
    assert code == 0, err
    code, _, err = cli("train", "--resume", run_dir, "total_steps=250", "--quiet")
    assert code == 0, err
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    run_id = load_checkpoint(run_dir / "checkpoints" / "latest.pt")["logger"]["wandb_id"]
    # offline-run-<time>-<id>, W&B adds a "-1" suffix when both start in the same second
    assert all(f"-{run_id}" in path.name for path in runs), (run_id, runs)


def test_resuming_a_run_killed_after_its_final_checkpoint_adds_nothing(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    code, _, err = cli("train", *SAC_ARGS, "total_steps=200", "--quiet", "--run-dir", run_dir)
    assert code == 0, err
    rows, result = metrics_rows(run_dir), (run_dir / "result.json").read_text()
    (run_dir / "result.json").unlink()  # as if killed just before writing it
    code, _, err = cli("train", "--resume", run_dir, "--quiet")
    assert code == 0, err
    assert metrics_rows(run_dir) == rows
    assert (run_dir / "result.json").read_text() == result
