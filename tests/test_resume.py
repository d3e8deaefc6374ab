"""Exact resume: a run killed with SIGKILL after a checkpoint and resumed is the same run.

For SAC and PPO: N steps straight vs the same config killed at a step past its checkpoint at
N/2 (rows after the checkpoint already written), then ``rlgrad train --resume``: identical
metrics.jsonl rows (``charts/sps`` aside) and bitwise-identical parameters, optimiser state
and buffers; also with deferred non-finite checks (``learner.nonfinite_check_interval`` > 1),
whose pending counts the checkpoint must carry. Also SIGINT/SIGTERM handling (with async envs
too), NaN rewards, a raised ``total_steps``, a config.yaml rewritten only once the resume has
loaded, and ``--resume`` usage errors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from conftest import CONFIGS, REPO, SAC_PENDULUM, CliResult, assert_one_line_error, snapshot

from rlgrad.checkpoint import load_checkpoint
from rlgrad.config import LearnerConfig
from rlgrad.learner import Learner

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
# checkpoint before it is on disk, and rows after it are already in metrics.jsonl. It imports
# this module first, for the test envs registered here.
KILLER = f"""
import sys
sys.path.insert(0, {str(REPO / "tests")!r})
import test_resume
"""
KILLER += """
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


def test_nan_rewards_are_never_stored_and_a_stream_of_them_stops_the_run(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """Rewards NaN from step 200 on: no NaN reaches the replay buffer (the vector steps are
    dropped and counted), and after ``learner.max_nonfinite`` such steps in a row the run stops
    with exit code 1, naming the env and the last good checkpoint."""
    run_dir = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="env rlgrad-test/NaNPendulum-v0: non-finite"):
        code, _, err = cli(
            "train",
            *SAC_ARGS,
            "env.id=rlgrad-test/NaNPendulum-v0",
            "env.normalize_reward=true",
            "checkpoint.interval=100",
            "learner.max_nonfinite=5",
            "--quiet",
            "--run-dir",
            run_dir,
        )
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert "5 consecutive steps of env rlgrad-test/NaNPendulum-v0 had a non-finite" in line
    assert "last good checkpoint is" in line and "losses/" not in line
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert checkpoint["global_step"] == 200
    for name, tensor in {**tensors(checkpoint["agent"]), **tensors(checkpoint["envs"])}.items():
        assert not tensor.is_floating_point() or torch.isfinite(tensor).all(), name
    rows = metrics_rows(run_dir)
    assert all(r["learner/nonfinite_skips"] == 0 for r in rows if "learner/nonfinite_skips" in r)
    assert [r["env/nonfinite_transitions"] for r in rows if "env/nonfinite_transitions" in r]


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


# ---- a raised total_steps ------------------------------------------------------------------


def test_a_raised_total_steps_trains_on_and_evaluates_the_final_policy(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """A finished 200-step run resumed with total_steps=300 trains 100 more steps and reports
    the evaluation of the step-300 policy, in result.json and as an eval row at step 300."""
    run_dir = tmp_path / "run"
    code, _, err = cli("train", *SAC_ARGS, "total_steps=200", "--quiet", "--run-dir", run_dir)
    assert code == 0, err
    assert json.loads((run_dir / "result.json").read_text())["global_step"] == 200

    code, out, err = cli("train", "--resume", run_dir, "total_steps=300", "--quiet")
    assert code == 0, err
    assert out.startswith("done: 300 steps")
    result = json.loads((run_dir / "result.json").read_text())
    evals = [r for r in metrics_rows(run_dir) if "eval/return_mean" in r]
    assert [r["global_step"] for r in evals] == [200, 250, 300]  # eval.interval=250
    assert result["global_step"] == 300
    assert result["eval_return_mean"] == evals[-1]["eval/return_mean"]
    assert result["eval_return_mean"] != evals[0]["eval/return_mean"]
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert checkpoint["global_step"] == 300 and checkpoint["config"]["total_steps"] == 300
    assert checkpoint["loop"]["final_returns"] is not None
    config = (run_dir / "config.yaml").read_text()
    assert config.startswith("# kernels: ") and "\ntotal_steps: 300\n" in config


class FailingTensorBoard:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device", "events.out.tfevents")


def test_config_yaml_is_rewritten_only_once_the_resume_has_loaded(
    cli: Callable[..., CliResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume raising total_steps that fails while it starts (here: TensorBoard cannot write)
    leaves config.yaml, result.json and everything else as they were, in one error line."""
    run_dir = tmp_path / "run"
    code, _, err = cli("train", *SAC_ARGS, "total_steps=200", "--quiet", "--run-dir", run_dir)
    assert code == 0, err
    before = snapshot(run_dir)
    monkeypatch.setattr("rlgrad.runner.TensorBoardSink", FailingTensorBoard)
    code, out, err = cli("train", "--resume", run_dir, "total_steps=300", "--quiet")
    assert code == 2
    assert_one_line_error(err, "events.out.tfevents", "No space left on device")
    assert snapshot(run_dir) == before


# ---- deferred non-finite checks --------------------------------------------------------------


def test_deferred_nonfinite_counts_are_in_the_learner_state() -> None:
    """Skips made since the last deferred check are counted when the state is taken."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    learner = Learner(LearnerConfig(device="cpu", nonfinite_check_interval=5))
    learner.add_optimizer("net", net.parameters(), lr=0.1)
    x = torch.randn(4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for bad in (True, False, True):
            loss = net(x).pow(2).mean()
            learner.step("net", loss * float("nan") if bad else loss)
        state = learner.state_dict()
    assert state["nonfinite_skips"] == 2
    fresh = Learner(LearnerConfig(device="cpu", nonfinite_check_interval=5))
    fresh.add_optimizer("net", torch.nn.Linear(3, 1).parameters(), lr=0.1)
    fresh.load_state_dict(state)
    assert fresh.nonfinite_skips == 2


class HugeRewardEvery(gym.Wrapper):
    """Pendulum whose reward is 1e30 (finite, but the critic's loss overflows) every ``every``
    steps: updates whose batch holds such a row are skipped by the non-finite guard."""

    def __init__(self, env: gym.Env, every: int):
        super().__init__(env)
        self.every, self.steps = every, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        return obs, 1e30 if self.steps % self.every == 0 else reward, terminated, truncated, info


gym.register(
    "rlgrad-test/HugeRewardPendulum-v0",
    entry_point=lambda every=40, **kw: HugeRewardEvery(
        gym.make("Pendulum-v1", **kw).unwrapped, every
    ),
    max_episode_steps=200,
)


def test_killed_and_resumed_run_with_deferred_nonfinite_checks_equals_a_straight_run(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """With ``learner.nonfinite_check_interval=7`` the skips pending at the checkpoint are in
    it: the resumed run logs the same ``learner/nonfinite_skips`` as the straight one."""
    args = (
        *SAC_ARGS,
        "env.id=rlgrad-test/HugeRewardPendulum-v0",
        "env.normalize_reward=false",
        "learner.nonfinite_check_interval=7",
        "learner.max_nonfinite=1000",
    )
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        code, _, err = cli("train", *args, "--quiet", "--run-dir", straight)
    assert code == 0, err
    skips = [
        r["learner/nonfinite_skips"]
        for r in metrics_rows(straight)
        if "learner/nonfinite_skips" in r
    ]
    assert skips[-1] > 0, "the test needs skipped updates"

    assert run_killed(resumed, 437, args) == -signal.SIGKILL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        code, _, err = cli("train", "--resume", resumed, "--quiet")
    assert code == 0, err
    assert metrics_rows(resumed) == metrics_rows(straight)


# ---- Ctrl-C with async envs -----------------------------------------------------------------


def test_ctrl_c_with_async_envs_saves_a_checkpoint_and_exits_130(tmp_path: Path) -> None:
    """SIGINT to the whole process group (a Ctrl-C in the terminal) reaches the env worker
    processes too: they ignore it, and the run saves its checkpoint and exits 130."""
    run_dir = tmp_path / "run"
    args = [a for a in SAC_ARGS if not a.startswith(("total_steps", "checkpoint.interval"))]
    command = [sys.executable, "-m", "rlgrad.cli", "train", *args, "total_steps=1000000"]
    command += ["checkpoint.interval=50", "env.vectorization=async", "env.n_envs=2"]
    command += ["--quiet", "--run-dir", str(run_dir)]
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, "WANDB_MODE": "disabled"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a command
    )
    checkpoint = run_dir / "checkpoints" / "latest.pt"
    try:
        deadline = time.monotonic() + 180
        while not checkpoint.is_file():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the run wrote no checkpoint"
            time.sleep(0.05)
        first = load_checkpoint(checkpoint)["global_step"]
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    step = load_checkpoint(checkpoint)["global_step"]
    assert step > first
    assert (
        stderr.strip()
        .splitlines()[-1]
        .startswith(f"rlgrad: interrupted by SIGINT at step {step}; checkpoint saved")
    )
    assert not (run_dir / "result.json").exists()
