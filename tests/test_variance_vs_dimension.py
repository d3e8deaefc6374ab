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
