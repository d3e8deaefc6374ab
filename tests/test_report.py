"""``rlgrad report``: the table's statistics on hand-made runs whose answers are known."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml
from conftest import assert_one_line_error, run_cli

from rlgrad.report import read_runs, write_report
from rlgrad.report_figures import figure_pixels
from rlgrad.study_spec import SPEC_FILE


def make_run(
    root: Path, label: str, env: str, seed: int, rows: list[dict], finished: bool = True
) -> Path:
    """A run directory as the runner leaves it (only the keys the report reads)."""
    run_dir = root / "runs" / env / label / f"seed{seed}"
    run_dir.mkdir(parents=True)
    config = {"agent": {"name": "sac"}, "env": {"id": env}, "seed": seed}
    config["logging"] = {"job_type": label}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if finished:
        (run_dir / "result.json").write_text("{}\n")
    return run_dir


def evals(steps: list[int], values: list[float]) -> list[dict]:
    return [{"global_step": s, "eval/return_mean": v} for s, v in zip(steps, values, strict=True)]


def table(report: str, env: str) -> dict[str, dict[str, str]]:
    section = report.split(f"## {env}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """Env A: two estimators × 2 seeds with gradient records; env B: one run, none."""
    grads0 = [
        {"global_step": 50, "grad/pathwise/snr": 1.0, "grad/score/snr": 0.5},
        {"global_step": 150, "grad/pathwise/snr": 3.0, "grad/score/snr": float("inf")},
        {"global_step": 150, "grad/variance_ratio_score_over_pathwise": 10.0},
        {"global_step": 150, "grad/pathwise/layer.0/snr": 99.0},  # per-layer: not an estimator
    ]
    grads1 = [{"global_step": 50, "grad/pathwise/snr": 2.0, "grad/score/snr": 0.25}]
    grads1 += [{"global_step": 60, "grad/variance_ratio_score_over_pathwise": 30.0}]
    make_run(tmp_path, "sac", "A", 0, grads0 + evals([100, 200, 300], [-10, -5, 0]))
    make_run(tmp_path, "sac", "A", 1, grads1 + evals([100, 200, 300], [-20, -10, -4]))
    per_step = [{"global_step": 10, "grad/score/snr_per_step": v} for v in (1.0, 2.0, 3.0)]
    make_run(tmp_path, "ppo", "A", 0, per_step + evals([1000, 3000], [-8, -2]))
    make_run(tmp_path, "ppo", "A", 1, evals([1000, 3000], [-12, -6]))
    make_run(tmp_path, "sac", "B", 0, evals([100], [7.0]))
    make_run(tmp_path, "sac", "B", 1, evals([100], [1.0]), finished=False)
    spec = {
        "name": "hand",
        "config": "c.yaml",
        "estimators": {"sac": {}, "ppo": {}},
        "seeds": [0, 1],
    }
    spec["threshold"] = {"A": -5.0}
    (tmp_path / SPEC_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
    return tmp_path


def test_table_statistics(study: Path) -> None:
    report = write_report(study)
    text = report.path.read_text()
    assert text.startswith("# Study `hand`")
    assert "5 finished runs (1 unfinished or failed left out)" in text
    a = table(text, "A")
    assert list(a) == ["sac", "ppo"]  # the spec's order
    sac, ppo = a["sac"], a["ppo"]
    assert sac["seeds"] == "2"
    assert sac["final eval return"] == "-2 ± 2.828"  # finals 0 and -4
    # seed 0: (-7.5·100 - 2.5·100)/200 = -5; seed 1: (-15·100 - 7·100)/200 = -11
    assert sac["AUC (mean return)"] == "-8"
    assert sac["steps to ≥ -5"] == "250 (2/2)"  # at 200 and at 300
    assert sac["median SNR (pathwise)"] == "2"  # of 1, 3, 2
    assert sac["median SNR (score)"] == "0.375"  # of 0.5, 0.25 (inf left out)
    assert sac["median variance ratio"] == "20"
    assert ppo["final eval return"] == "-4 ± 2.828"
    assert ppo["AUC (mean return)"] == "-7"  # -5 and -9
    assert ppo["steps to ≥ -5"] == "– (1/2)"  # 3000 and never: the median is never
    assert ppo["median SNR (pathwise)"] == "–"
    assert ppo["median SNR (score)"] == "2"  # snr_per_step, as on-policy agents log it
    assert ppo["median variance ratio"] == "–"
    b = table(text, "B")
    assert "steps to" not in " ".join(b["sac"])  # no threshold for B
    assert b["sac"]["final eval return"] == "7 ± 0"
    assert b["sac"]["AUC (mean return)"] == "7"


def test_threshold_from_the_command_line(study: Path) -> None:
    code, out, err = run_cli("report", study, "--threshold", "-10")
    assert code == 0, err
    assert "report:" in out
    a = table((study / "report.md").read_text(), "A")
    assert a["sac"]["steps to ≥ -10"] == "150 (2/2)"  # 100 and 200
    assert a["ppo"]["steps to ≥ -10"] == "2000 (2/2)"  # 1000 and 3000
    assert "steps to ≥ -10" in table((study / "report.md").read_text(), "B")["sac"]


def test_figures_have_one_column_per_env(study: Path) -> None:
    write_report(study)
    for name, rows in (("returns.png", 2), ("gradients.png", 3)):
        data = (study / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", data[16:24]) == figure_pixels(2, rows)


def test_read_runs_groups_by_job_type_and_skips_unfinished(study: Path) -> None:
    runs, unfinished = read_runs(study)
    assert unfinished == 1
    assert sorted((r.env, r.label, r.seed) for r in runs) == [
        ("A", "ppo", 0),
        ("A", "ppo", 1),
        ("A", "sac", 0),
        ("A", "sac", 1),
        ("B", "sac", 0),
    ]
    sac0 = next(r for r in runs if (r.env, r.label, r.seed) == ("A", "sac", 0))
    assert sac0.grad_estimators() == {"pathwise", "score"}


def test_report_needs_finished_runs(tmp_path: Path) -> None:
    code, _, err = run_cli("report", tmp_path)
    assert code == 2
    assert_one_line_error(err, "no finished runs")
    code, _, err = run_cli("report", tmp_path / "missing")
    assert code == 2
    assert_one_line_error(err, "no such study folder")
