"""``rlgrad report DIR --wandb``: the aggregate table and the figures as one W&B run in the
study's group, read back from the offline ``.wandb`` file (and the table file it names)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from conftest import assert_one_line_error, run_cli
from test_report import evals, make_run
from wandb_records import find_run_file, history_rows, run_info, wait_for_exit_record

import rlgrad.report as report_module
from rlgrad.report import aggregate_table, write_report
from rlgrad.study_spec import SPEC_FILE


@pytest.fixture(autouse=True)
def quick_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_module, "BOOTSTRAP_REPS", 200)


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B offline (WANDB_MODE), with no key, run identity or user settings from the shell."""
    for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_RUN_GROUP", "WANDB_RUN_ID", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """Study ``hand`` in project ``rlgrad-test``: sac (2 seeds, SNR records) and ppo on A."""
    out = tmp_path / "study"
    logging = {"logging": {"project": "rlgrad-test", "group": "hand"}}
    snr = [{"global_step": 50, "grad/pathwise/snr": 2.0}]
    make_run(out, "sac", "A", 0, snr + evals([100, 200, 300], [-10, -5, 0]), config=logging)
    make_run(out, "sac", "A", 1, evals([100, 200, 300], [-20, -10, -4]), config=logging)
    make_run(out, "ppo", "A", 0, evals([1000, 3000], [-8, -2]), config=logging)
    spec = {"name": "hand", "config": "c.yaml", "estimators": {"sac": {}, "ppo": {}}}
    spec |= {"seeds": [0, 1], "threshold": -5.0}
    (out / SPEC_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def test_the_report_is_one_offline_run_in_the_study_group(study: Path, offline: None) -> None:
    code, out, err = run_cli("report", study, "--wandb")
    assert code == 0, err
    path = find_run_file(study / "wandb")
    assert f"rlgrad: W&B offline run: {path.parent}" in out
    wait_for_exit_record(path)
    info = run_info(path)
    assert (info["project"], info["group"], info["job_type"]) == ("rlgrad-test", "hand", "report")
    assert info["name"] == "hand/report"
    assert info["config"]["bootstrap_reps"] == 200 and info["config"]["bootstrap_seed"] == 0

    (row,) = history_rows(path)
    assert row["report/aggregate._type"] == "table-file"
    table_file = path.parent / "files" / row["report/aggregate.path"]
    data = table_file.read_bytes()
    assert hashlib.sha256(data).hexdigest() == row["report/aggregate.sha256"]
    logged = json.loads(data)
    records = [dict(zip(logged["columns"], r, strict=True)) for r in logged["data"]]
    assert [(r["env"], r["estimator"]) for r in records] == [("A", "sac"), ("A", "ppo")]
    sac, ppo = records
    assert (sac["seeds"], sac["final_return_mean"], sac["auc_mean"]) == (2, -2.0, -8.0)
    assert (sac["threshold"], sac["steps_to_threshold"], sac["seeds_reached"]) == (-5.0, 250.0, 2)
    assert sac["median_snr_pathwise"] == 2.0 and ppo["median_snr_pathwise"] is None
    assert sac["final_return_iqm_low"] <= sac["final_return_iqm"] <= sac["final_return_iqm_high"]
    assert ppo["final_return_iqm"] == ppo["final_return_iqm_low"] == -2.0  # one seed
    assert ppo["steps_to_threshold"] == 3000.0 and ppo["median_variance_ratio"] is None
    # the very numbers of the report (written again: the same, the bootstrap being seeded)
    columns, rows = aggregate_table(write_report(study))
    assert logged["columns"] == columns and logged["data"] == rows

    assert row["report/improvement.nrows"] == 1
    for figure in ("returns", "gradients", "profiles"):
        assert row[f"report/{figure}._type"] == "image-file"
        assert (path.parent / "files" / row[f"report/{figure}.path"]).is_file()


def test_disabled_wandb_logs_nothing(study: Path, offline: None, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    code, out, err = run_cli("report", study, "--wandb")
    assert code == 0, err
    assert "W&B: disabled" in out
    assert not (study / "wandb").exists()


def test_a_wandb_failure_is_one_line_and_the_report_stays(study: Path, offline: None, monkeypatch):
    import wandb

    def refuse(**kwargs: object) -> None:
        raise wandb.errors.CommError("could not reach api.wandb.ai")

    monkeypatch.setattr(wandb, "init", refuse)
    code, _, err = run_cli("report", study, "--wandb")
    assert code == 2
    assert_one_line_error(err, "W&B logging failed (could not reach api.wandb.ai)")
    assert (study / "report.md").is_file()


def test_the_exact_gradient_table_reaches_wandb(tmp_path: Path, offline: None) -> None:
    """Runs measured against the exact gradient add the table ``report/exact_gradient`` and the
    figure ``report/exact``."""
    out = tmp_path / "study"
    logging = {"logging": {"project": "rlgrad-test", "group": "discrete"}}
    agent = {"agent": {"name": "sac_discrete", "actor_estimator": "score"}}
    for seed in (0, 1):
        rows = [{"global_step": 50, "grad/score/bias": 0.1 * (seed + 1), "grad/score/snr": 3.0}]
        make_run(
            out, "score", "CartPole-v1", seed, rows + evals([100], [50.0]), config=logging | agent
        )
    code, _, err = run_cli("report", out, "--wandb")
    assert code == 0, err
    path = find_run_file(out / "wandb")
    wait_for_exit_record(path)
    (row,) = history_rows(path)
    logged = json.loads((path.parent / "files" / row["report/exact_gradient.path"]).read_bytes())
    (record,) = [dict(zip(logged["columns"], r, strict=True)) for r in logged["data"]]
    assert (record["estimator"], record["trains_with"], record["seeds"]) == ("score", "score", 2)
    assert record["median_bias"] == pytest.approx(0.15) and record["median_variance"] is None
    assert row["report/exact._type"] == "image-file"
