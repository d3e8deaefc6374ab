"""experiments/variance_vs_dimension.py: the variance ratio per critic evaluation it plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import variance_vs_dimension as vd  # noqa: E402

from rlgrad.errors import UsageError  # noqa: E402
from rlgrad.report import Run  # noqa: E402


def test_bandit_ratio_is_score_k8_loo_over_pathwise_per_evaluation(tmp_path: Path) -> None:
    rows = [
        "d,K,estimator,baseline,critic_evaluations,variance,variance_per_evaluation",
        "4,1,pathwise,,1,2.0,2.0",
        "4,1,score,none,1,50.0,50.0",
        "4,8,score,loo,8,3.0,24.0",
        "4,8,score,optimal,8,4.0,32.0",
        "4,8,mixed,loo,9,1.0,9.0",
        "16,1,pathwise,,1,5.0,5.0",
        "16,8,score,loo,8,40.0,320.0",
    ]
    path = tmp_path / "scaling.csv"
    path.write_text("\n".join(rows) + "\n")
    assert vd.bandit_ratios(path) == {4: 12.0, 16: 64.0}


def _run(rows: list[dict], learning_starts: int = 100) -> Run:
    config = {"agent": {"name": "sac", "learning_starts": learning_starts}}
    return Run(Path("r"), "sac-score", "Hopper-v5", 0, rows, config)


def test_run_ratio_is_the_median_after_learning_starts_weighted_by_evaluations() -> None:
    def measurement(step: int, score: float, pathwise: float) -> dict:
        return {
            "global_step": step,
            "grad/score/variance": score,
            "grad/pathwise/variance": pathwise,
            "grad/score/critic_evaluations": 8.0,
            "grad/pathwise/critic_evaluations": 1.0,
        }

    rows = [
        measurement(100, 1000.0, 1.0),  # at learning_starts: not counted
        measurement(200, 1.0, 2.0),  # 8 * 1 / 2 = 4
        {"global_step": 250, "charts/episodic_return": 3.0},
        measurement(300, 3.0, 1.0),  # 24
        measurement(400, 1.0, 1.0),  # 8
    ]
    ratio = vd.run_ratio(_run(rows))
    assert ratio.measurements == 3
    assert ratio.median == pytest.approx(8.0)
    assert (ratio.first_third, ratio.last_third) == (pytest.approx(4.0), pytest.approx(8.0))


def test_a_run_without_both_measurements_is_refused() -> None:
    rows = [{"global_step": 200, "grad/score/variance": 1.0}]
    with pytest.raises(UsageError, match="no paired"):
        vd.run_ratio(_run(rows))


def test_cli_on_a_folder_without_sac_measurements_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "runs" / "CartPole-v1" / "ppo" / "seed0"
    run_dir.mkdir(parents=True)
    config = {"agent": {"name": "ppo"}, "env": {"id": "CartPole-v1"}, "seed": 0, "logging": {}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"global_step": 1, "eval/return_mean": 9}))
    (run_dir / "result.json").write_text("{}")
    assert vd.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "measured both estimators" in err


def test_mixed_weights_pool_every_group_after_learning_starts() -> None:
    rows = [
        {"global_step": 100, "grad/mixed/weight_pathwise/mean": 0.9},  # at learning_starts
        {"global_step": 200, "grad/mixed/weight_pathwise/mean": 0.1}
        | {"grad/mixed/weight_pathwise/log_std": 0.3},
        {"global_step": 300, "grad/mixed/weight_pathwise/mean": float("nan")},
        {"global_step": 300, "grad/mixed/weight_pathwise/trunk.0": 0.5},
    ]
    assert sorted(vd.mixed_weights_on_pathwise(_run(rows)).tolist()) == [0.1, 0.3, 0.5]
    assert vd.mixed_weights_on_pathwise(_run([{"global_step": 200}])).size == 0


def test_env_summary_is_the_median_over_runs_and_pools_mixed_weights() -> None:
    def row(env: str, d: int, ratio: float, first: float, last: float, weights: list) -> dict:
        return {
            "source": "study",
            "env": env,
            "d": d,
            "ratio_per_evaluation": ratio,
            "ratio_first_third": first,
            "ratio_last_third": last,
            "mixed_weights": weights,
        }

    rows = [
        {"source": "bandit, true Q", "env": "rlgrad/QuadraticBandit-v0", "d": 1},
        row("Ant-v5", 8, 8.0, 2.0, 10.0, []),
        row("Ant-v5", 8, 16.0, 4.0, 20.0, [0.5, 0.7]),
        row("Ant-v5", 8, 12.0, 3.0, 30.0, [0.6]),
        row("Hopper-v5", 3, 4.0, 1.0, 5.0, []),
    ]
    hopper, ant = vd.env_summaries(rows)
    assert (hopper.env, hopper.runs, hopper.mixed_weight_on_pathwise) == ("Hopper-v5", 1, None)
    assert (ant.d, ant.runs, ant.ratio, ant.first_third, ant.last_third) == (8, 3, 12, 3, 20)
    assert ant.ratio_per_state == pytest.approx(12.0 / vd.SCORE_K)
    assert ant.mixed_weight_on_pathwise == pytest.approx(0.6)
