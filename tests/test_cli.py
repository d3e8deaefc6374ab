"""The ``rlgrad`` command: a tiny SAC run end to end, determinism, and one-line usage errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import (
    SAC_PENDULUM,
    CliResult,
    assert_one_line_error,
    run_tiny_training,
    snapshot,
)

from rlgrad.checkpoint import load_checkpoint
from rlgrad.config import load_config

EXPECTED_METRICS = (
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/sps",
    "losses/critic",
    "losses/actor",
    "losses/alpha",
    "charts/alpha",
    "eval/return_mean",
    "eval/return_std",
)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_sps(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "charts/sps"} for row in rows]


@pytest.fixture(scope="module")
def seed0_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny SAC run (seed 0, training metrics every 100 steps), shared by several tests."""
    run_dir = tmp_path_factory.mktemp("cli") / "seed0"
    code, out, err = run_tiny_training(run_dir, "logging.interval=100")
    assert code == 0, err
    assert "done: 300 steps" in out
    return run_dir


# ---- a tiny run end to end -----------------------------------------------------------------


def test_smoke_train_writes_run_dir(seed0_run: Path) -> None:
    run_dir = seed0_run
    # The resolved config, which loads back to what was run.
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.total_steps == 300 and cfg.seed == 0
    assert cfg.agent.hidden_sizes == [32, 32] and cfg.agent.batch_size == 32
    assert cfg.logging.wandb == "disabled" and cfg.logging.interval == 100
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["agent"]["learning_starts"] == 50

    # metrics.jsonl: every row has global_step; every expected name appears.
    rows = read_metrics(run_dir)
    assert rows and all(isinstance(row.get("global_step"), int) for row in rows)
    names = set().union(*rows)
    for name in EXPECTED_METRICS:
        assert name in names, f"{name} never logged; logged: {sorted(names)}"
    steps = [row["global_step"] for row in rows]
    assert steps == sorted(steps) and 0 < steps[0] and steps[-1] == 300
    # Training metrics every logging.interval=100 steps; Pendulum episodes last 200 steps.
    assert [r["global_step"] for r in rows if "losses/critic" in r] == [100, 200, 300]
    assert [r["charts/episodic_length"] for r in rows if "charts/episodic_length" in r] == [200.0]
    # Evaluation only at the end (eval.interval=0) over eval.episodes=2 episodes.
    evals = [r for r in rows if "eval/return_mean" in r]
    assert len(evals) == 1 and evals[0]["global_step"] == 300
    assert evals[0]["eval/return_mean"] < 0 and evals[0]["eval/return_std"] >= 0
    for row in rows:
        for key, value in row.items():
            # The noise scale is +inf (written "inf": JSON has no infinity) when the mean
            # gradient is lost in the noise; every other value is a finite number.
            if key.endswith("/noise_scale") and value == "inf":
                continue
            assert isinstance(value, int | float), (key, value)
    # Gradient diagnostics are on by default: SAC measures every 100 updates.
    assert [r["global_step"] for r in rows if "grad/pathwise/snr" in r] == [150, 250]

    # TensorBoard events hold the same scalars.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list(run_dir.glob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    assert "losses/critic" in scalars and "eval/return_mean" in scalars
    tb_critic = [(e.step, e.value) for e in accumulator.Scalars("losses/critic")]
    jsonl_critic = [(r["global_step"], r["losses/critic"]) for r in rows if "losses/critic" in r]
    assert [s for s, _ in tb_critic] == [s for s, _ in jsonl_critic]
    for (_, a), (_, b) in zip(tb_critic, jsonl_critic, strict=True):
        assert a == pytest.approx(b, rel=1e-6)

    # The final checkpoint.
    state = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert state["global_step"] == 300
    assert state["agent_name"] == "sac" and state["env_id"] == "Pendulum-v1"
    assert state["agent"]["buffer"]["size"] == 300
    # No W&B files when it is disabled.
    assert not (run_dir / "wandb").exists()


def test_same_seed_same_metrics_other_seed_other_metrics(seed0_run: Path, tmp_path: Path) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    assert run_tiny_training(again, "logging.interval=100")[0] == 0
    first, second = read_metrics(seed0_run), read_metrics(again)
    assert len(first) == len(second)
    assert without_sps(first) == without_sps(second)
    assert [("charts/sps" in r) for r in first] == [("charts/sps" in r) for r in second]

    # Another seed (a shorter run keeps the test fast): other losses at the first record.
    assert run_tiny_training(other, "logging.interval=100", "seed=1", "total_steps=100")[0] == 0
    other_rows = without_sps(read_metrics(other))
    losses_0 = next(r for r in without_sps(first) if "losses/critic" in r)
    losses_1 = next(r for r in other_rows if "losses/critic" in r)
    assert losses_0["global_step"] == losses_1["global_step"] == 100
    assert losses_0 != losses_1
    assert losses_0["losses/critic"] != losses_1["losses/critic"]


# ---- usage errors ----------------------------------------------------------------------------

# The rows of the README's "Bad input" table (unknown key, wrong type, malformed override, unknown
# or discrete env, total_steps <= 0, missing config file, occupied run directory, ...) are tested
# in test_bad_input.py, one test per row; these are the other config errors.
ERROR_CASES = {
    "unknown_agent": (["agent.name=dqn"], ("dqn", "ppo", "reinforce", "sac")),
    "bad_choice": (["learner.device=tpu"], ("learner.device", "tpu", "'cpu'")),
}


@pytest.mark.parametrize("overwrite", [False, True], ids=["", "overwrite"])
@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_config_errors_exit_2_with_one_line(
    cli: Callable[..., CliResult], existing_run: Path, case: str, overwrite: bool
) -> None:
    overrides, fragments = ERROR_CASES[case]
    before = snapshot(existing_run)
    flags = ["--quiet", "--run-dir", str(existing_run), *(["--overwrite"] if overwrite else [])]
    code, out, err = cli("train", SAC_PENDULUM, *overrides, *flags)
    assert code == 2
    assert_one_line_error(err, *fragments)
    assert out == ""
    # Even with --overwrite, a rejected config leaves the existing run alone.
    assert snapshot(existing_run) == before


def test_error_does_not_create_run_dir(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    run_dir = tmp_path / "fresh"
    code, _, err = cli("train", SAC_PENDULUM, "total_steps=0", "--run-dir", run_dir)
    assert code == 2 and err.startswith("rlgrad: error:")
    assert not run_dir.exists()


def test_negative_seed_is_a_usage_error(cli: Callable[..., CliResult], existing_run: Path) -> None:
    before = snapshot(existing_run)
    code, _, err = cli(
        "train",
        SAC_PENDULUM,
        "seed=-1",
        "total_steps=10",
        "logging.wandb=disabled",
        "--quiet",
        "--run-dir",
        existing_run,
        "--overwrite",
    )
    assert code == 2
    assert_one_line_error(err, "seed")
    assert snapshot(existing_run) == before


def test_bad_env_kwargs_is_a_usage_error(cli: Callable[..., CliResult], existing_run: Path) -> None:
    code, _, err = cli("train", SAC_PENDULUM, "env.kwargs.bogus=1", "--run-dir", existing_run)
    assert code == 2
    assert_one_line_error(err, "bogus")


def test_overwrite_replaces_existing_run(
    train_tiny: Callable[..., CliResult], existing_run: Path
) -> None:
    (existing_run / "stale.txt").write_text("from the old run")
    code, out, err = train_tiny(
        "total_steps=60", "eval.episodes=1", run_dir=existing_run, overwrite=True
    )
    assert code == 0, err
    assert "done: 60 steps" in out
    assert not (existing_run / "stale.txt").exists()
    assert load_config(existing_run / "config.yaml").total_steps == 60
    rows = read_metrics(existing_run)
    assert all(row["global_step"] != 7 for row in rows)  # the old metrics are gone
    assert rows[-1]["global_step"] == 60 and "eval/return_mean" in rows[-1]
    assert load_checkpoint(existing_run / "checkpoints" / "latest.pt")["global_step"] == 60
