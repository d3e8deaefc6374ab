"""``rlgrad eval``: reproduces the run's own final evaluation for every agent at any number of
episodes, refuses foreign checkpoints and names what a video needs installed."""

from __future__ import annotations

import json
import math
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CONFIGS, CliResult, assert_one_line_error, run_cli, run_tiny_training

from rlgrad.runner import eval_seed

NORMALISED = ("env.normalize_obs=true", "eval.episodes=3")
RUNS = ("sac_run", "ppo_run", "reinforce_run")

# 300 steps of 4 envs: one update each, then a part-filled rollout of the 4 training envs in the
# checkpoint (which an evaluation over another number of envs must not load).
ON_POLICY_TINY = (
    "total_steps=300",
    "agent.hidden_sizes=[32,32]",
    "logging.wandb=disabled",
    "eval.episodes=3",
    "eval.interval=0",
)


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("eval") / "sac"
    code, _, err = run_tiny_training(run_dir, *NORMALISED)
    assert code == 0, err
    return run_dir


def train_on_policy(run_dir: Path, config: str, *overrides: str) -> Path:
    code, _, err = run_cli(
        "train", CONFIGS / config, *ON_POLICY_TINY, *overrides, "--quiet", "--run-dir", run_dir
    )
    assert code == 0, err
    return run_dir


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("eval") / "ppo"
    return train_on_policy(run_dir, "ppo_pendulum.yaml", "agent.n_steps=64")


@pytest.fixture(scope="module")
def reinforce_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("eval") / "reinforce"
    return train_on_policy(
        run_dir, "reinforce_invpendulum.yaml", "agent.n_steps=16", "env.normalize_obs=true"
    )


def printed_return(out: str) -> float:
    return float(out.split("return ")[1].split(" ±")[0])


def final_eval(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["eval/return_mean"] for row in rows if "eval/return_mean" in row][-1]


@pytest.mark.parametrize("run", RUNS)
def test_eval_with_the_runs_eval_seed_reproduces_its_final_evaluation(
    cli: Callable[..., CliResult], request: pytest.FixtureRequest, run: str
) -> None:
    """Same weights, normaliser statistics and seeds → the same return, to print precision."""
    run_dir = request.getfixturevalue(run)
    seed = eval_seed(0, 0)  # the tiny run evaluates once, at the end, with seed 0
    code, out, err = cli("eval", run_dir, "--episodes", "3", "--seed", seed)
    assert code == 0, err
    assert printed_return(out) == pytest.approx(final_eval(run_dir), abs=0.006)
    assert "deterministic" in out and "at step 300" in out


@pytest.mark.parametrize("run", RUNS)
def test_eval_at_the_default_episodes_of_every_agent(
    cli: Callable[..., CliResult], request: pytest.FixtureRequest, run: str
) -> None:
    """10 eval envs against a checkpoint of 1 (SAC) or 4 (PPO, REINFORCE) training envs: the
    training buffers stay out of the evaluation agent."""
    code, out, err = cli("eval", request.getfixturevalue(run))
    assert code == 0, err
    assert "over 10 episodes" in out
    assert math.isfinite(printed_return(out))


def test_eval_names_the_difference_when_the_config_no_longer_fits(
    cli: Callable[..., CliResult], ppo_run: Path, tmp_path: Path
) -> None:
    edited = tmp_path / "edited"
    (edited / "checkpoints").mkdir(parents=True)
    (edited / "checkpoints" / "latest.pt").write_bytes(
        (ppo_run / "checkpoints" / "latest.pt").read_bytes()
    )
    config = (ppo_run / "config.yaml").read_text()
    assert "hidden_sizes:\n  - 32\n" in config
    (edited / "config.yaml").write_text(
        config.replace("hidden_sizes:\n  - 32\n", "hidden_sizes:\n  - 16\n", 1)
    )
    code, _, err = cli("eval", edited)
    assert code == 2
    line = assert_one_line_error(err, "policy.", "(32, 3) in the checkpoint", "(16, 3)", "edited")
    assert "run directory it came from" not in line


def test_eval_on_fresh_seeds_differs_between_calls(
    cli: Callable[..., CliResult], sac_run: Path
) -> None:
    outs = [cli("eval", sac_run, "--episodes", "2", "--stochastic")[1] for _ in range(2)]
    assert all("stochastic" in out for out in outs)
    assert outs[0] != outs[1]


def test_eval_refuses_a_checkpoint_from_another_agent(
    cli: Callable[..., CliResult], sac_run: Path, ppo_run: Path
) -> None:
    checkpoint = ppo_run / "checkpoints" / "latest.pt"
    code, _, err = cli("eval", sac_run, "--checkpoint", checkpoint)
    assert code == 2
    assert_one_line_error(err, "written by agent ppo", "trains sac", "run directory it came from")


def test_eval_of_a_directory_without_a_run(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    code, _, err = cli("eval", tmp_path)
    assert code == 2
    assert_one_line_error(err, "not a run directory", str(tmp_path))


def test_video_without_moviepy_says_what_to_install(
    cli: Callable[..., CliResult], sac_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moviepy is reported first, whether or not the renderer (pygame) is there too."""
    monkeypatch.setitem(sys.modules, "moviepy", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "pygame", None)
    code, _, err = cli("eval", sac_run, "--video", tmp_path / "videos")
    assert code == 2
    line = assert_one_line_error(err, "moviepy", 'pip install "rlgrad[video]"')
    assert "pygame" not in line
    assert not (tmp_path / "videos").exists()


def test_video_without_pygame_says_what_to_install(
    cli: Callable[..., CliResult], sac_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With moviepy present (a stand-in here), Pendulum's missing renderer is named."""
    monkeypatch.setitem(sys.modules, "moviepy", types.ModuleType("moviepy"))
    monkeypatch.setitem(sys.modules, "pygame", None)  # import fails as if not installed
    code, _, err = cli("eval", sac_run, "--video", tmp_path / "videos")
    assert code == 2
    assert_one_line_error(err, "pygame", "Pendulum-v1", 'pip install "rlgrad[video]"')
    assert not (tmp_path / "videos").exists()


def test_video_writes_one_file_per_episode(
    cli: Callable[..., CliResult], sac_run: Path, tmp_path: Path
) -> None:
    pytest.importorskip("moviepy")
    pytest.importorskip("pygame")
    code, out, err = cli("eval", sac_run, "--episodes", "2", "--video", tmp_path / "videos")
    assert code == 0, err
    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 2 and all(v.stat().st_size > 1000 for v in videos)
