"""``rlgrad eval``: reproduces the run's own final evaluation, refuses foreign checkpoints."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CONFIGS, CliResult, assert_one_line_error, run_tiny_training

from rlgrad.runner import eval_seed

NORMALISED = ("env.normalize_obs=true", "eval.episodes=3")


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("eval") / "sac"
    code, _, err = run_tiny_training(run_dir, *NORMALISED)
    assert code == 0, err
    return run_dir


def final_eval(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["eval/return_mean"] for row in rows if "eval/return_mean" in row][-1]


def test_eval_with_the_runs_eval_seed_reproduces_its_final_evaluation(
    cli: Callable[..., CliResult], sac_run: Path
) -> None:
    """Same weights, normaliser statistics and seeds → the same return, to print precision."""
    seed = eval_seed(0, 0)  # the tiny run evaluates once, at the end, with seed 0
    code, out, err = cli("eval", sac_run, "--episodes", "3", "--seed", seed)
    assert code == 0, err
    printed = float(out.split("return ")[1].split(" ±")[0])
    assert printed == pytest.approx(final_eval(sac_run), abs=0.006)
    assert "deterministic" in out and "at step 300" in out


def test_eval_on_fresh_seeds_differs_between_calls(
    cli: Callable[..., CliResult], sac_run: Path
) -> None:
    outs = [cli("eval", sac_run, "--episodes", "2", "--stochastic")[1] for _ in range(2)]
    assert all("stochastic" in out for out in outs)
    assert outs[0] != outs[1]


def test_eval_refuses_a_checkpoint_from_another_agent(
    cli: Callable[..., CliResult], sac_run: Path, tmp_path: Path
) -> None:
    ppo_dir = tmp_path / "ppo"
    code, _, err = cli(
        "train",
        CONFIGS / "ppo_pendulum.yaml",
        "total_steps=256",
        "agent.n_steps=64",
        "logging.wandb=disabled",
        "eval.episodes=1",
        "--quiet",
        "--run-dir",
        ppo_dir,
    )
    assert code == 0, err
    checkpoint = ppo_dir / "checkpoints" / "latest.pt"
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
    monkeypatch.setitem(sys.modules, "moviepy", None)  # import fails as if not installed
    code, _, err = cli("eval", sac_run, "--video", tmp_path / "videos")
    assert code == 2
    assert_one_line_error(err, "moviepy", "pip install")
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
