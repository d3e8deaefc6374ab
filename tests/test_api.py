"""The Python API: ``rlgrad.train``, ``rlgrad.load`` / ``Policy.predict`` and policy files."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from conftest import CONFIGS, snapshot

import rlgrad
from rlgrad.api import BEST_FILE, POLICY_FILE, resolve_config, save_policy
from rlgrad.checkpoint import load_checkpoint
from rlgrad.config import ConfigError, load_config
from rlgrad.errors import UsageError
from rlgrad.evaluation import evaluate_run

LATEST = Path("checkpoints") / "latest.pt"
# A SAC run on Pendulum of a few seconds, as keyword overrides: both spellings.
TINY_SAC = {
    "total_steps": 300,
    "logging__wandb": "disabled",
    "logging__tensorboard": False,
    "agent__learning_starts": 50,
    "eval__episodes": 2,
    "eval__interval": 0,
    "agent.batch_size": 32,
    "agent.hidden_sizes": [32, 32],
}
RUN_NAME = re.compile(r"^sac-Pendulum-v1-s0-\d{8}-\d{6}-[0-9a-f]{4}$")


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rlgrad.TrainResult]:
    """A tiny SAC run trained through ``rlgrad.train`` into the default run directory."""
    folder = tmp_path_factory.mktemp("api")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        result = rlgrad.train("sac_pendulum", **TINY_SAC)
        assert not result.run_dir.is_absolute()  # runs/… under the working folder
        yield dataclasses.replace(result, run_dir=folder / result.run_dir)


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory: pytest.TempPathFactory) -> rlgrad.TrainResult:
    """A tiny PPO run with observation normalisation (ppo_pendulum normalises obs and rewards)."""
    return rlgrad.train(
        "ppo_pendulum",
        run_dir=tmp_path_factory.mktemp("ppo") / "run",
        total_steps=512,
        env__n_envs=2,
        agent__n_steps=128,
        agent__n_epochs=2,
        eval__episodes=2,
        eval__interval=0,
        logging__wandb="disabled",
        logging__tensorboard=False,
    )


def test_import_rlgrad_does_not_import_torch() -> None:
    code = (
        "import sys, rlgrad\n"
        "assert 'torch' not in sys.modules and 'rlgrad.api' not in sys.modules\n"
        "assert callable(rlgrad.train) and callable(rlgrad.load)\n"
        "assert 'torch' in sys.modules\n"
        "print(sorted(set(rlgrad.__all__) - set(dir(rlgrad))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_train_returns_the_result_with_overrides_applied(sac_run: rlgrad.TrainResult) -> None:
    assert sac_run.global_step == 300
    assert RUN_NAME.match(sac_run.run_dir.name), sac_run.run_dir.name
    assert sac_run.run_dir.parent.name == "runs"
    saved = json.loads((sac_run.run_dir / "result.json").read_text())
    assert saved["eval_return_mean"] == sac_run.eval_return_mean
    assert saved["global_step"] == 300
    config = yaml.safe_load(
        "\n".join(
            line
            for line in (sac_run.run_dir / "config.yaml").read_text().splitlines()
            if not line.startswith("#")
        )
    )
    assert config["agent"]["batch_size"] == 32  # dotted key
    assert config["agent"]["hidden_sizes"] == [32, 32]
    assert config["agent"]["learning_starts"] == 50  # double underscores
    assert config["logging"]["wandb"] == "disabled"
    assert config["total_steps"] == 300


def test_config_by_name_path_dict_or_config_with_either_override_spelling() -> None:
    by_name = resolve_config("sac_pendulum", agent__batch_size=64, total_steps=1e3)
    by_path = resolve_config(
        CONFIGS / "sac_pendulum.yaml", **{"agent.batch_size": 64}, total_steps=1000
    )
    as_dict = yaml.safe_load((CONFIGS / "sac_pendulum.yaml").read_text())
    by_dict = resolve_config(as_dict, **{"agent.batch_size": 64, "total_steps": 1000})
    by_config = resolve_config(
        load_config(CONFIGS / "sac_pendulum.yaml"), agent__batch_size=64, total_steps=1000
    )
    reference = load_config("sac_pendulum", ["agent.batch_size=64", "total_steps=1000"])
    for cfg in (by_name, by_path, by_dict, by_config):
        assert cfg == reference
    assert by_name.total_steps == 1000 and isinstance(by_name.total_steps, int)
    # A later keyword wins, whichever spelling.
    assert resolve_config("sac_pendulum", agent__tau=0.1, **{"agent.tau": 0.2}).agent.tau == 0.2


def test_bad_overrides_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'agent.learning_rate'\?") as caught:
        resolve_config("sac_pendulum", lr=3e-4)
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="malformed override key 'agent..tau'"):
        resolve_config("sac_pendulum", **{"agent..tau": 0.1})
    with pytest.raises(ConfigError, match="config file not found: sac_pendulm; did you mean"):
        rlgrad.train("sac_pendulm")


def test_load_predicts_like_the_run_acts(sac_run: rlgrad.TrainResult) -> None:
    policy = rlgrad.load(sac_run.run_dir)
    assert policy.env_id == "Pendulum-v1"
    assert policy.checkpoint == sac_run.run_dir / POLICY_FILE  # the runner wrote it last
    assert policy.obs_shape == (3,)
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=3)
    action = policy.predict(obs)
    assert isinstance(action, np.ndarray) and action.shape == (1,) and action.dtype == np.float32
    assert -2.0 <= action[0] <= 2.0  # Pendulum's torque bounds: the env's own action space
    batch = np.stack([obs, obs * 0.5, -obs])
    actions = policy.predict(batch)
    assert actions.shape == (3, 1)
    np.testing.assert_array_equal(actions[0], action)
    np.testing.assert_array_equal(policy.predict(obs), action)  # deterministic
    sampled = np.stack([policy.predict(obs, deterministic=False) for _ in range(20)])
    assert sampled.std() > 0 and np.all(np.abs(sampled) <= 2.0)


def test_predict_applies_the_runs_observation_normalisation(ppo_run: rlgrad.TrainResult) -> None:
    """An episode played with ``predict`` on a plain ``gymnasium.make`` env earns exactly the
    return ``rlgrad eval`` measures on the same seed (through the run's normalising wrapper)."""
    policy = rlgrad.load(ppo_run.run_dir)
    assert policy.obs_stats is not None and policy.obs_stats.count > 100
    assert np.abs(policy.obs_stats.mean).max() > 1e-3  # a non-trivial normaliser
    seed = 1234
    evaluated = evaluate_run(ppo_run.run_dir, 1, seed=seed).returns[0]
    env = gym.make(policy.env_id)
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy.predict(obs))
        total += float(reward)
        done = terminated or truncated
    assert total == pytest.approx(evaluated, abs=1e-6)
    # Without the normaliser the same weights act differently.
    raw = policy.agent.act_deterministic(torch.as_tensor(obs[None], dtype=torch.float32))
    assert not np.allclose(np.clip(raw.numpy()[0], -1, 1) * 2.0, policy.predict(obs))


def test_save_policy_writes_a_small_file_that_load_prefers(
    sac_run: rlgrad.TrainResult, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(sac_run.run_dir, run)
    for name in (POLICY_FILE, BEST_FILE):  # this test writes them itself
        (run / name).unlink()
    from_latest = rlgrad.load(run)
    path = save_policy(
        run / POLICY_FILE, from_latest.agent, from_latest.obs_stats, from_latest.config, 300
    )
    saved = load_checkpoint(path)
    assert saved["kind"] == "policy" and saved["agent_name"] == "sac"
    assert saved["env_id"] == "Pendulum-v1" and saved["global_step"] == 300
    assert set(saved["agent"]) == {"actor"}  # no critics, no buffer
    assert saved["config"]["agent"]["hidden_sizes"] == [32, 32]
    assert saved["obs_rms"] is None  # sac_pendulum does not normalise observations
    assert path.stat().st_size < (run / LATEST).stat().st_size / 5

    policy = rlgrad.load(run)
    assert policy.checkpoint == run / POLICY_FILE and policy.global_step == 300
    observations = np.random.default_rng(0).uniform(-1, 1, (16, 3)).astype(np.float32)
    expected = from_latest.predict(observations)
    np.testing.assert_array_equal(policy.predict(observations), expected)
    # A policy file on its own (its config inside) loads anywhere.
    alone = tmp_path / "elsewhere" / "my_policy.pt"
    alone.parent.mkdir()
    shutil.copy(path, alone)
    np.testing.assert_array_equal(rlgrad.load(alone).predict(observations), expected)
    # best.pt (the runner's policy at its best evaluation) is read by name, like the others.
    save_policy(run / BEST_FILE, from_latest.agent, None, from_latest.config, 100)
    assert rlgrad.load(run, checkpoint="best").global_step == 100
    assert rlgrad.load(run, checkpoint="latest").checkpoint == run / LATEST
    with pytest.raises(UsageError, match=r"has no checkpoints/best.pt"):
        rlgrad.load(tmp_path / "elsewhere", checkpoint="best")
    # A run resumed after its policy file was written: the newer latest.pt wins.
    newer = path.stat().st_mtime_ns + 10**9
    os.utime(run / LATEST, ns=(newer, newer))
    assert rlgrad.load(run).checkpoint == run / LATEST


def test_a_run_writes_its_policy_file_at_the_end_and_its_best_policy(
    sac_run: rlgrad.TrainResult,
) -> None:
    """policy.pt holds the final actor (equal to latest.pt's); best.pt the actor at the best
    evaluation, with the step it was taken at."""
    run = sac_run.run_dir
    final, best = load_checkpoint(run / POLICY_FILE), load_checkpoint(run / BEST_FILE)
    latest = load_checkpoint(run / LATEST)
    assert final["global_step"] == latest["global_step"] == 300
    for key, value in final["agent"]["actor"].items():
        assert torch.equal(value, latest["agent"]["actor"][key])
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in evals if "eval/return_mean" in row]
    best_row = max(evals, key=lambda row: row["eval/return_mean"])
    assert best["global_step"] == best_row["global_step"]
    assert latest["loop"]["best_return"] == best_row["eval/return_mean"]


def test_policy_file_keeps_the_observation_normaliser(
    ppo_run: rlgrad.TrainResult, tmp_path: Path
) -> None:
    trained = rlgrad.load(ppo_run.run_dir)
    path = save_policy(tmp_path / "policy.pt", trained.agent, trained.obs_stats, trained.config)
    saved = load_checkpoint(path)
    assert set(saved["agent"]) == {"policy"} and saved["global_step"] == -1
    policy = rlgrad.load(path)
    np.testing.assert_array_equal(policy.obs_stats.mean, trained.obs_stats.mean)
    np.testing.assert_array_equal(policy.obs_stats.var, trained.obs_stats.var)
    obs = np.array([[0.5, -0.5, 1.0], [1.0, 0.0, -3.0]], np.float32)
    np.testing.assert_array_equal(policy.predict(obs), trained.predict(obs))


def test_train_refuses_a_run_dir_holding_a_run(existing_run: Path) -> None:
    before = snapshot(existing_run)
    with pytest.raises(UsageError, match="already holds a run") as caught:
        rlgrad.train("sac_pendulum", run_dir=existing_run, **TINY_SAC)
    assert "\n" not in str(caught.value)
    assert snapshot(existing_run) == before


def test_load_and_predict_bad_input_is_one_line(
    sac_run: rlgrad.TrainResult, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match=r"holds no run \(no config.yaml\)") as caught:
        rlgrad.load(empty)
    assert "\n" not in str(caught.value)
    with pytest.raises(UsageError, match="no run directory"):
        rlgrad.load(tmp_path / "missing")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(sac_run.run_dir / "config.yaml", unfinished / "config.yaml")
    with pytest.raises(UsageError, match="holds no checkpoint"):
        rlgrad.load(unfinished)

    policy = rlgrad.load(sac_run.run_dir)
    for bad in (np.zeros(2), np.zeros((4, 2)), np.zeros((2, 3, 1))):
        with pytest.raises(
            ValueError, match=r"takes shape \(3,\) \(or a batch \(n, 3\)\)"
        ) as caught:
            policy.predict(bad)
        assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="not an array of numbers"):
        policy.predict("left")
