"""``rlgrad compare``: a tiny study end to end (local processes and Ray), failed runs, reruns.

The tiny study: SAC with each actor estimator × 2 seeds on ``rlgrad/PointMass-v0`` (200 steps,
gradient diagnostics every 50 updates), plus an estimator whose config is impossible and one
whose env does not exist; both of those must fail without stopping the others. And the workers
of an ``rlgrad compare`` killed with SIGKILL stop with it.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, assert_one_line_error, run_cli

from rlgrad.backends import RunJob, execute_run
from rlgrad.config import ConfigError
from rlgrad.report_figures import figure_pixels
from rlgrad.study import plan_study, resumable, training_order
from rlgrad.study_spec import load_spec

ENV = "rlgrad/PointMass-v0"
GOOD = ("sac-pathwise", "sac-score")
SEEDS = (0, 1)
THRESHOLD = -12.0
TINY = [
    f"env.id={ENV}",
    "total_steps=200",
    "logging.wandb=disabled",
    "logging.tensorboard=false",
    "agent.learning_starts=50",
    "agent.batch_size=32",
    "agent.hidden_sizes=[32,32]",
    "agent.score_samples=4",
    "eval.episodes=2",
    "eval.interval=50",
    "diagnostics.interval=50",
    "diagnostics.reference_batch=64",
]
ESTIMATORS = {
    "sac-pathwise": {"overrides": ["agent.actor_estimator=pathwise"]},
    "sac-score": {"overrides": ["agent.actor_estimator=score"]},
}
BROKEN = {
    "impossible": {"overrides": ["agent.score_baseline=loo", "agent.score_samples=1"]},
    "no-such-env": {"overrides": ["env.id=NoSuchEnv-v0"]},
}


def write_spec(directory: Path, estimators: dict, **extra: object) -> Path:
    spec = {
        "name": "tiny",
        "config": str(CONFIGS / "sac_pendulum.yaml"),
        "overrides": TINY,
        "estimators": estimators,
        "seeds": list(SEEDS),
        "threshold": THRESHOLD,
        **extra,
    }
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_dir(out: Path, label: str, seed: int) -> Path:
    return out / "runs" / "rlgrad_PointMass-v0" / label / f"seed{seed}"


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@dataclass
class Study:
    out: Path
    spec: Path
    code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """The tiny study with two broken estimators, run once by ``rlgrad compare`` (2 workers)."""
    directory = tmp_path_factory.mktemp("compare")
    spec = write_spec(directory, {**ESTIMATORS, **BROKEN})
    out = directory / "out"
    code, stdout, stderr = run_cli("compare", spec, "--workers", "2", "--out", out)
    return Study(out, spec, code, stdout, stderr)


def test_local_study_writes_every_run_and_the_report(study: Study) -> None:
    for label in GOOD:
        for seed in SEEDS:
            path = run_dir(study.out, label, seed)
            result = json.loads((path / "result.json").read_text())
            assert result["global_step"] == 200
            config = yaml.safe_load((path / "config.yaml").read_text())
            assert config["seed"] == seed and config["env"]["id"] == ENV
            assert config["logging"]["group"] == "tiny"
            assert config["logging"]["job_type"] == label
            assert config["logging"]["tags"][:2] == [label, ENV]
            expected = "pathwise" if label == "sac-pathwise" else "score"
            assert config["agent"]["actor_estimator"] == expected
            rows = read_rows(path)
            assert any("grad/pathwise/snr" in row for row in rows)
            assert rows[-1]["eval/return_mean"] == pytest.approx(result["eval_return_mean"])
    assert (study.out / "report.md").is_file()
    assert "4 trained, 0 skipped, 4 failed" in study.stdout


def test_failed_runs_are_reported_and_do_not_stop_the_others(study: Study) -> None:
    assert study.code == 1
    failed = [line for line in study.stdout.splitlines() if line.strip().startswith("FAILED")]
    summary = study.stdout[study.stdout.index("4 trained") :]
    for seed in SEEDS:
        assert f"FAILED impossible {ENV} seed {seed}: invalid config:" in summary
        assert "score_samples >= 2" in summary
        assert f"FAILED no-such-env NoSuchEnv-v0 seed {seed}" in summary
        error = study.out / "runs" / "NoSuchEnv-v0" / "no-such-env" / f"seed{seed}" / "error.txt"
        assert "NoSuchEnv" in error.read_text()
        assert not (error.parent / "result.json").exists()
    assert len(failed) >= 4
    # the report covers the finished runs only
    report = (study.out / "report.md").read_text()
    assert "impossible" not in report and "no-such-env" not in report


def parse_table(report: str, env: str) -> dict[str, dict[str, str]]:
    """The markdown table under ``## env``: estimator → column → cell."""
    section = report.split(f"## {env}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def expected_row(runs: list[list[dict]]) -> dict[str, float]:
    """The report's numbers recomputed from metrics.jsonl rows, independently of rlgrad."""
    finals, aucs, reach = [], [], []
    for rows in runs:
        evals = [(r["global_step"], r["eval/return_mean"]) for r in rows if "eval/return_mean" in r]
        finals.append(evals[-1][1])
        area = sum(
            (s1 - s0) * (v0 + v1) / 2
            for (s0, v0), (s1, v1) in zip(evals[:-1], evals[1:], strict=True)
        )
        aucs.append(area / (evals[-1][0] - evals[0][0]))
        reach.append(next((s for s, v in evals if v >= THRESHOLD), math.inf))
    snr = {
        est: statistics.median(
            r[f"grad/{est}/snr"] for rows in runs for r in rows if f"grad/{est}/snr" in r
        )
        for est in ("pathwise", "score")
    }
    ratios = [
        r["grad/variance_ratio_score_over_pathwise"]
        for rows in runs
        for r in rows
        if "grad/variance_ratio_score_over_pathwise" in r
    ]
    return {
        "final_mean": statistics.mean(finals),
        "final_std": statistics.stdev(finals),
        "auc": statistics.mean(aucs),
        "reach": statistics.median(reach),
        "reached": sum(math.isfinite(s) for s in reach),
        "snr_pathwise": snr["pathwise"],
        "snr_score": snr["score"],
        "ratio": statistics.median(ratios),
    }


def close(cell: str, value: float) -> bool:
    """A report cell (4 significant digits) equals ``value``."""
    return float(cell) == pytest.approx(value, rel=6e-4, abs=1e-9)


def test_report_numbers_equal_a_recomputation_from_the_metrics(study: Study) -> None:
    table = parse_table((study.out / "report.md").read_text(), ENV)
    assert list(table) == list(GOOD)
    for label in GOOD:
        row = table[label]
        want = expected_row([read_rows(run_dir(study.out, label, seed)) for seed in SEEDS])
        assert row["seeds"] == "2"
        mean, std = row["final eval return"].split(" ± ")
        assert close(mean, want["final_mean"]) and close(std, want["final_std"])
        assert close(row["AUC (mean return)"], want["auc"])
        steps, reached = re.fullmatch(
            r"(\S+) \((\d)/2\)", row[f"steps to ≥ {THRESHOLD:g}"]
        ).groups()
        assert int(reached) == want["reached"]
        assert steps == "–" if math.isinf(want["reach"]) else close(steps, want["reach"])
        assert close(row["median SNR (pathwise)"], want["snr_pathwise"])
        assert close(row["median SNR (score)"], want["snr_score"])
        assert close(row["median variance ratio"], want["ratio"])


def test_figures_are_images_of_the_expected_size(study: Study) -> None:
    report = (study.out / "report.md").read_text()
    for name, panel_rows in (("returns.png", 2), ("gradients.png", 3)):
        path = study.out / name
        assert f"]({name})" in report
        assert png_size(path) == figure_pixels(1, panel_rows)
        assert path.stat().st_size > 20_000  # curves and text, not a blank canvas


def test_a_rerun_skips_finished_runs(study: Study, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, ESTIMATORS)  # the same runs, without the broken ones
    before = {p: p.read_bytes() for p in (study.out / "runs").rglob("*") if p.is_file()}
    code, stdout, _ = run_cli("compare", spec, "--out", study.out)
    assert code == 0
    assert "0 trained, 4 skipped, 0 failed" in stdout
    after = {p: p.read_bytes() for p in (study.out / "runs").rglob("*") if p.is_file()}
    assert after == before


def test_a_changed_spec_does_not_mix_with_finished_runs(study: Study, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, ESTIMATORS)
    code, _, stderr = run_cli("compare", spec, "total_steps=300", "--out", study.out)
    assert code == 2
    assert_one_line_error(stderr, "holds a finished run with another config")


def test_ray_backend_runs_the_same_grid(study: Study, tmp_path: Path) -> None:
    """A local Ray (started here, so ``rlgrad compare`` joins it) gives the very same runs."""
    ray = pytest.importorskip("ray")
    spec = write_spec(tmp_path, ESTIMATORS)
    out = tmp_path / "ray"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code, stdout, stderr = run_cli("compare", spec, "--backend", "ray", "--out", out)
    finally:
        ray.shutdown()
    assert code == 0, stderr
    assert "4 trained, 0 skipped, 0 failed" in stdout
    for label in GOOD:
        for seed in SEEDS:
            ours, local = run_dir(out, label, seed), run_dir(study.out, label, seed)
            assert (ours / "result.json").read_text() == (local / "result.json").read_text()
    assert list(parse_table((out / "report.md").read_text(), ENV)) == list(GOOD)


# ---- planning, resuming and usage errors (no training) -----------------------------------


def test_plan_expands_envs_grid_and_seeds_in_override_order(tmp_path: Path) -> None:
    spec_path = write_spec(
        tmp_path,
        {"sac": {"overrides": ["agent.gamma=0.5", "total_steps=300"]}},
        envs=["Pendulum-v1", ENV],
        grid={"agent.tau": [0.01, 0.02]},
    )
    runs = plan_study(load_spec(spec_path), tmp_path / "out", ["total_steps=400"])
    assert len(runs) == 2 * 2 * 2
    assert len({run.run_dir for run in runs}) == 8
    first = runs[0]
    assert (first.label, first.env, first.seed) == ("sac[agent.tau=0.01]", "Pendulum-v1", 0)
    assert first.run_dir == tmp_path / "out/runs/Pendulum-v1/sac_agent.tau=0.01/seed0"
    cfg = first.config
    assert cfg["agent"]["gamma"] == 0.5  # the estimator's override beats the study's
    assert cfg["total_steps"] == 400  # the command line beats both
    assert cfg["agent"]["tau"] == 0.01 and cfg["env"]["id"] == "Pendulum-v1"
    assert cfg["logging"]["job_type"] == "sac[agent.tau=0.01]"
    assert cfg["logging"]["tags"] == ["sac", "Pendulum-v1", "agent.tau=0.01"]
    assert [(r.env, r.config["agent"]["tau"], r.seed) for r in runs[-2:]] == [
        (ENV, 0.02, 0),
        (ENV, 0.02, 1),
    ]


def test_runs_train_seed_by_seed_in_spec_order_within_a_seed(tmp_path: Path) -> None:
    """A study stopped partway has every estimator on every env for its first seeds."""
    spec_path = write_spec(tmp_path, ESTIMATORS, envs=["Pendulum-v1", ENV])
    spec = load_spec(spec_path)
    runs = plan_study(spec, tmp_path / "out")
    assert [r.seed for r in runs] == [0, 1] * 4  # planned (and reported) estimator by estimator
    order = training_order(runs, spec.seeds)
    expected = [(label, env) for label in ESTIMATORS for env in ("Pendulum-v1", ENV)]
    assert [(r.label, r.env, r.seed) for r in order] == [
        *((label, env, 0) for label, env in expected),
        *((label, env, 1) for label, env in expected),
    ]


@pytest.mark.parametrize("name", ["pendulum", "invpendulum"])
def test_shipped_study_specs_plan_valid_runs(name: str, tmp_path: Path) -> None:
    spec = load_spec(CONFIGS / "compare" / f"{name}.yaml")
    runs = plan_study(spec, tmp_path)
    assert [run.error for run in runs if run.error] == []
    assert {run.estimator for run in runs} == {
        "sac-pathwise",
        "sac-score",
        "reinforce-value",
        "ppo",
    }
    assert len(runs) == 4 * 5 and spec.threshold is not None
    for run in runs:
        budget = 15_000 if run.config["agent"]["name"] == "sac" else 200_000
        assert run.config["total_steps"] <= budget
        assert run.config["diagnostics"]["interval"] > 0
    sac = {r.estimator: r.config["agent"] for r in runs if r.estimator.startswith("sac")}
    assert sac["sac-score"]["actor_estimator"] == "score"
    assert sac["sac-score"]["score_baseline"] == "loo"


def test_unfinished_run_resumes_only_with_its_checkpoint_and_config(
    study: Study, tmp_path: Path
) -> None:
    spec = load_spec(write_spec(tmp_path, {"sac-pathwise": ESTIMATORS["sac-pathwise"]}))
    run = plan_study(spec, tmp_path / "out")[0]
    assert not resumable(run)  # nothing there yet
    run.run_dir.joinpath("checkpoints").mkdir(parents=True)
    (run.run_dir / "checkpoints" / "latest.pt").write_bytes(b"torn")
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(run.config, sort_keys=False))
    assert resumable(run)
    other = plan_study(spec, tmp_path / "out", ["agent.tau=0.5"])[0]
    assert not resumable(other)  # another config: start again
    # a checkpoint that cannot be read: the run starts again from scratch, and so it ends
    # exactly as the study's run of the same config did
    result = execute_run(RunJob(str(run.run_dir), run.config, resume=True))
    assert result.ok, result.error
    same = run_dir(study.out, "sac-pathwise", 0)
    assert (run.run_dir / "result.json").read_text() == (same / "result.json").read_text()
    no_sps = [{k: v for k, v in r.items() if k != "charts/sps"} for r in read_rows(run.run_dir)]
    assert no_sps == [{k: v for k, v in r.items() if k != "charts/sps"} for r in read_rows(same)]


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        ({"estimatorz": {}}, ["unknown study key 'estimatorz'", "estimators"]),
        ({"seeds": 0}, ["study key 'seeds'", "positive"]),
        ({"estimators": {"a b": {}}}, ["estimator label 'a b'"]),
        ({"estimators": {"x": {"config": "nope.yaml"}}}, ["config file not found: nope.yaml"]),
        ({"estimators": {"x": {"overrides": ["oops"]}}}, ["malformed override 'oops'"]),
        ({"grid": {"seed": [1, 2]}}, ["grid key 'seed'", "seeds"]),
    ],
)
def test_bad_specs_are_one_line_errors(edit: dict, fragments: list[str], tmp_path: Path) -> None:
    extra = dict(edit)
    spec = write_spec(tmp_path, extra.pop("estimators", ESTIMATORS), **extra)
    code, _, stderr = run_cli("compare", spec, "--out", tmp_path / "out")
    assert code == 2
    assert_one_line_error(stderr, *fragments)
    assert not (tmp_path / "out" / "runs").exists()


def test_ray_backend_without_ray_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    spec = write_spec(tmp_path, ESTIMATORS)
    code, _, stderr = run_cli("compare", spec, "--backend", "ray", "--out", tmp_path / "out")
    assert code == 2
    assert_one_line_error(stderr, "pip install 'rlgrad[ray]'")


def test_missing_spec_is_a_one_line_error(tmp_path: Path) -> None:
    code, _, stderr = run_cli("compare", tmp_path / "none.yaml")
    assert code == 2
    assert_one_line_error(stderr, "config file not found")
    with pytest.raises(ConfigError):
        load_spec(tmp_path / "none.yaml")


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc")
def test_workers_of_a_killed_compare_stop_with_it(tmp_path: Path) -> None:
    """``rlgrad compare`` killed with SIGKILL (its workers are session leaders, out of reach of
    the terminal's signals): each worker notices, lets its run checkpoint, and exits, so that a
    rerun never finds the old runs still training."""
    from rlgrad.run_lock import holder_pid

    spec = write_spec(tmp_path, {"sac-pathwise": ESTIMATORS["sac-pathwise"]})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "rlgrad.cli", "compare", str(spec), "total_steps=10000000"]
    command += ["checkpoint.interval=50", "--workers", "2", "--out", str(out)]
    compare = subprocess.Popen(
        command,
        cwd=CONFIGS.parent,
        env={**os.environ, "WANDB_MODE": "disabled"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    dirs = [run_dir(out, "sac-pathwise", seed) for seed in SEEDS]
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while not (
            all((d / "checkpoints" / "latest.pt").is_file() for d in dirs)
            and all(holder_pid(d) not in (None, compare.pid) for d in dirs)
        ):
            assert compare.poll() is None, f"rlgrad compare exited with {compare.returncode}"
            assert time.monotonic() < deadline, "the runs did not start"
            time.sleep(0.1)
        workers = [holder_pid(d) for d in dirs]
        assert all(process_alive(pid) for pid in workers)
        compare.kill()
        compare.wait()
        deadline = time.monotonic() + 30
        while any(process_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if process_alive(pid)], "workers outlived compare"
    finally:
        if compare.poll() is None:
            compare.kill()
            compare.wait()
        for pid in workers:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
    for d in dirs:  # each run checkpointed as it stopped, and released its directory
        assert not (d / "result.json").exists()
        assert not (d / ".lock").exists()
