"""``rlgrad report``: the table's statistics on hand-made runs whose answers are known; the
rliable estimates against rliable itself; which runs are pooled; what the figures draw."""

from __future__ import annotations

import json
import re
import struct
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import assert_one_line_error, run_cli
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection

import rlgrad.report as report_module
from rlgrad.report import (
    BOOTSTRAP_REPS,
    BOOTSTRAP_SEED,
    group_runs,
    pooled_config,
    profile_taus,
    read_runs,
    separate_unlike_runs,
    write_report,
)
from rlgrad.report_figures import (
    bootstrap_mean_band,
    figure_pixels,
    gradients_figure,
    returns_figure,
)
from rlgrad.study_spec import SPEC_FILE

QUICK_REPS = 200


@pytest.fixture(autouse=True)
def quick_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer bootstrap resamples than a real report (rliable's bootstrap is a Python loop);
    tests that check the intervals pass ``reps=BOOTSTRAP_REPS`` themselves."""
    monkeypatch.setattr(report_module, "BOOTSTRAP_REPS", QUICK_REPS)


def make_run(
    root: Path,
    label: str | None,
    env: str,
    seed: int,
    rows: list[dict],
    finished: bool = True,
    config: dict | None = None,
    folder: str | None = None,
) -> Path:
    """A run directory as the runner leaves it (only the keys the report reads, plus
    ``config``'s sections): ``logging.job_type`` = ``label`` (None: unset, as ``rlgrad train``
    leaves it), in ``root/runs/<env>/<label>/seed<k>`` unless ``folder`` is given."""
    run_dir = root / (folder or f"runs/{env}/{label}/seed{seed}")
    run_dir.mkdir(parents=True)
    extra = json.loads(json.dumps(config or {}))  # a copy: callers reuse theirs
    config = {"agent": {"name": "sac"}, "env": {"id": env}, "seed": seed, **extra}
    config.setdefault("logging", {})["job_type"] = label
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


def interval(cell: str) -> tuple[float, float, float]:
    """``"v [low, high]"`` → (v, low, high)."""
    match = re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", cell)
    assert match, cell
    return float(match[1]), float(match[2]), float(match[3])


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
    # IQMs (2 seeds: the mean; rliable's own numbers are checked below) within the seeds' range
    for cell, lowest, highest in (
        (sac["final return IQM [95% CI]"], -4, 0),
        (sac["AUC IQM [95% CI]"], -11, -5),
        (ppo["final return IQM [95% CI]"], -6, -2),
    ):
        value, low, high = interval(cell)
        assert lowest <= low <= value <= high <= highest
    assert sac["final return IQM [95% CI]"].startswith("-2 [")
    assert b["sac"]["final return IQM [95% CI]"] == "7 [7, 7]"  # one seed
    assert "## Probability of improvement" in text and "| A | sac | ppo |" in text


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


# ---- rliable: the report's estimates are rliable's on the same numbers ----------------------

FINALS = {  # in the report's order (no study.yaml: alphabetical)
    "pathwise": [1.0, 2.0, 3.0, 4.0, 100.0],
    "ppo": [-3.0, 8.0],
    "score": [0.0, 1.5, 2.5, 5.0, 6.0],
}


@pytest.fixture
def scored(tmp_path: Path) -> Path:
    """One env, three estimators (5, 5 and 2 seeds) whose final and AUC returns are known:
    evaluations at steps 0 and 100 of (0, final) give AUC = final / 2."""
    for label, finals in FINALS.items():
        for seed, final in enumerate(finals):
            make_run(tmp_path, label, "E", seed, evals([0, 100], [0.0, final]))
    return tmp_path


def rliable_estimates(scores: dict[str, list[float]], reps: int) -> tuple[dict, dict]:
    """rliable called directly: IQM point estimates and 95 % intervals, as its README does."""
    from rliable import library, metrics

    matrices = {label: np.asarray(v, dtype=float).reshape(-1, 1) for label, v in scores.items()}
    np.random.seed(BOOTSTRAP_SEED)
    return library.get_interval_estimates(
        matrices, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps
    )


def test_iqm_and_intervals_equal_rliable_on_the_same_scores(scored: Path) -> None:
    from rliable import library, metrics

    assert BOOTSTRAP_REPS == 2000  # a real report's resamples (here fewer, to be quick)
    state = np.random.get_state()
    report = write_report(scored)
    assert report.reps == QUICK_REPS
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(state[1:], after[1:], strict=True))
    rows = {s.label: s for s in report.stats}
    assert rows["pathwise"].final_iqm.value == 3.0  # trims 1 and 100: the mean of 2, 3, 4
    assert rows["ppo"].final_iqm.value == 2.5  # 2 seeds: nothing trimmed

    points, intervals = rliable_estimates(FINALS, QUICK_REPS)
    text = table(report.path.read_text(), "E")
    for label in FINALS:
        iqm = rows[label].final_iqm
        assert iqm.value == pytest.approx(points[label][0], abs=1e-12)
        assert (iqm.low, iqm.high) == pytest.approx(tuple(intervals[label][:, 0]), abs=1e-12)
        low, high = intervals[label][:, 0]
        cell = f"{points[label][0]:.4g} [{low:.4g}, {high:.4g}]"
        assert text[label]["final return IQM [95% CI]"] == cell
    aucs = {label: [final / 2 for final in finals] for label, finals in FINALS.items()}
    points, intervals = rliable_estimates(aucs, QUICK_REPS)
    for label in FINALS:
        iqm = rows[label].auc_iqm
        assert iqm.value == pytest.approx(points[label][0], abs=1e-12)
        assert (iqm.low, iqm.high) == pytest.approx(tuple(intervals[label][:, 0]), abs=1e-12)

    # probability of improvement: each pair once, in the report's (here alphabetical) order
    arrays = {label: np.asarray(v).reshape(-1, 1) for label, v in FINALS.items()}
    pairs = {(x, y): (arrays[x], arrays[y]) for x, y in combinations(FINALS, 2)}
    np.random.seed(BOOTSTRAP_SEED)
    points, intervals = library.get_interval_estimates(
        pairs,
        lambda x, y: np.array([metrics.probability_of_improvement(x, y)]),
        reps=QUICK_REPS,
    )
    assert [(imp.x, imp.y) for imp in report.improvements] == list(pairs)
    section = report.path.read_text().split("## Probability of improvement\n", 1)[1]
    cells = [line.strip("|").split("|") for line in section.splitlines() if line[:1] == "|"]
    shown = {(x.strip(), y.strip()): p.strip() for _, x, y, p in cells[2:]}
    for imp in report.improvements:
        assert imp.estimate.value == pytest.approx(points[imp.x, imp.y][0], abs=1e-12)
        low, high = intervals[imp.x, imp.y][:, 0]
        assert (imp.estimate.low, imp.estimate.high) == pytest.approx((low, high), abs=1e-12)
        assert shown[imp.x, imp.y] == f"{points[imp.x, imp.y][0]:.4g} [{low:.4g}, {high:.4g}]"
    # pathwise beats score in 14 of 25 pairings (1 > 0; 2 > 0, 1.5; 3 and 4 > three; 100 > all)
    assert shown["pathwise", "score"].startswith(f"{14 / 25:.4g} [")


def test_profiles_equal_rliable_score_distributions(scored: Path) -> None:
    """The report's vectorized profile function gives rliable's own score distributions, with
    the same bootstrap bands."""
    from rliable import library

    report = write_report(scored)
    (result,) = report.envs
    profiles = result.profiles["final eval return"]
    taus = profile_taus(FINALS)
    matrices = {label: np.asarray(v, dtype=float).reshape(-1, 1) for label, v in FINALS.items()}
    np.random.seed(BOOTSTRAP_SEED)
    values, bands = library.create_performance_profile(matrices, taus, reps=QUICK_REPS)
    for label in FINALS:
        assert np.array_equal(profiles[label].taus, taus)
        assert np.allclose(profiles[label].value, values[label])
        assert np.allclose(profiles[label].low, bands[label][0])
        assert np.allclose(profiles[label].high, bands[label][1])
    assert profiles["pathwise"].value[0] == 1.0 and profiles["pathwise"].value[-1] == 0.0


def test_the_report_is_deterministic(scored: Path) -> None:
    first = write_report(scored).path.read_text()
    np.random.seed(12345)  # whatever the caller's generator holds
    assert write_report(scored).path.read_text() == first


def test_a_run_that_never_evaluated_has_no_score(tmp_path: Path) -> None:
    make_run(tmp_path, "sac", "E", 0, evals([0, 100], [0.0, 4.0]))
    make_run(tmp_path, "sac", "E", 1, [{"global_step": 10, "charts/episodic_return": 1.0}])
    make_run(tmp_path, "ppo", "E", 0, [{"global_step": 10, "charts/episodic_return": 1.0}])
    report = write_report(tmp_path)
    rows = {s.label: s for s in report.stats}
    assert rows["sac"].final_iqm.value == 4.0  # of the one seed that evaluated
    assert rows["ppo"].final_iqm is None and report.improvements == []
    assert table(report.path.read_text(), "E")["ppo"]["final return IQM [95% CI]"] == "–"


# ---- which runs are pooled -------------------------------------------------------------------


def test_pooled_config_ignores_seed_name_and_logging() -> None:
    config = {
        "agent": {"name": "sac", "lr": 0.001, "hidden_sizes": [32, 32]},
        "env": {"id": "E", "kwargs": {}},
        "seed": 3,
        "name": "study/sac/E/seed3",
        "logging": {"group": "g", "job_type": "sac", "tags": ["a"]},
    }
    assert pooled_config(config) == {
        "agent.name": "sac",
        "agent.lr": 0.001,
        "agent.hidden_sizes": [32, 32],
        "env.id": "E",
        "env.kwargs": {},
    }


def test_runs_whose_configs_differ_are_reported_apart(tmp_path: Path) -> None:
    """A folder of unrelated ``rlgrad train`` runs: all labelled ``sac`` (no job type), two
    learning rates with seeds 0 and 1 each, and a name/logging difference that is no reason to
    split."""
    for lr, finals in ((0.001, [1.0, 3.0]), (0.01, [10.0, 30.0])):
        for seed, final in enumerate(finals):
            config = {"agent": {"name": "sac", "lr": lr}, "name": f"mine-{lr}-{seed}"}
            config["logging"] = {"group": f"g{seed}", "tags": [str(seed)]}
            make_run(tmp_path, None, "E", seed, evals([0, 100], [0, final]), config=config,
                     folder=f"lr{lr}-seed{seed}")  # fmt: skip
    code, out, err = run_cli("report", tmp_path)
    assert code == 0, err
    assert "(2 estimator/env groups)" in out
    text = (tmp_path / "report.md").read_text()
    rows = table(text, "E")
    assert list(rows) == ["sac[agent.lr=0.001]", "sac[agent.lr=0.01]"]
    assert rows["sac[agent.lr=0.001]"]["seeds"] == "2"
    assert rows["sac[agent.lr=0.001]"]["final eval return"] == "2 ± 1.414"
    assert rows["sac[agent.lr=0.01]"]["final eval return"] == "20 ± 14.14"
    assert "Runs labelled `sac` on E differ in more than their seed (agent.lr)" in text


def test_runs_alike_but_for_the_seed_are_pooled(tmp_path: Path) -> None:
    runs = []
    for seed in (0, 1, 2):
        config = {"agent": {"name": "sac", "lr": 0.001}, "name": f"n{seed}"}
        config["logging"] = {"tags": [f"t{seed}"], "project": f"p{seed}"}
        make_run(tmp_path, None, "E", seed, evals([0, 100], [0, seed]), config=config,
                 folder=f"r{seed}")  # fmt: skip
    runs, _ = read_runs(tmp_path)
    assert separate_unlike_runs(runs) == []
    assert {r.label for r in runs} == {"sac"}
    assert [r.seed for r in group_runs(runs)["E"]["sac"]] == [0, 1, 2]


def test_one_seed_twice_is_refused(tmp_path: Path) -> None:
    config = {"agent": {"name": "sac", "lr": 0.001}}
    make_run(tmp_path, None, "E", 0, evals([0, 100], [0, 1.0]), config=config, folder="first")
    make_run(tmp_path, None, "E", 0, evals([0, 100], [0, 2.0]), config=config, folder="again")
    make_run(tmp_path, None, "E", 1, evals([0, 100], [0, 3.0]), config=config, folder="other")
    code, out, err = run_cli("report", tmp_path)
    assert code == 2 and out == ""
    assert_one_line_error(err, "one run twice", "seed 0", "a seed counts once")
    assert str(tmp_path / "first") in err and str(tmp_path / "again") in err
    assert not (tmp_path / "report.md").exists()


# ---- figures ---------------------------------------------------------------------------------


def test_two_seeds_draw_one_line_per_seed(tmp_path: Path) -> None:
    """Fewer than 3 seeds: each seed's own curve and no band; 3 seeds: a mean and a band."""
    sac = {0: [-10.0, -5.0, 0.0], 1: [-20.0, -10.0, -4.0]}
    for seed, values in sac.items():
        make_run(tmp_path, "sac", "A", seed, evals([100, 200, 300], values))
    for seed in range(3):
        make_run(tmp_path, "ppo", "A", seed, evals([100, 200, 300], [-9.0, -6.0, -3.0 + seed]))
    runs, _ = read_runs(tmp_path)
    groups = group_runs(runs, ["sac", "ppo"])
    fig = returns_figure(groups, ["sac", "ppo"])
    ax = fig.axes[0]  # A: eval return
    lines = [line for line in ax.lines if line.get_gid() == "sac"]
    assert len(lines) == 2
    for seed, line in enumerate(lines):
        assert list(line.get_xdata()) == [100, 200, 300]
        assert list(line.get_ydata()) == sac[seed]
    assert len({line.get_color() for line in lines}) == 1
    assert len([line for line in ax.lines if line.get_gid() == "ppo"]) == 1  # the mean
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1  # ppo's; none for sac
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["sac (2 seeds, each drawn)", "ppo"]


def test_band_is_the_bootstrap_interval_of_the_mean_within_the_seeds_range() -> None:
    """Seeds at 0, 1 and 2: every resample is all-0 with chance 1/27 > 2.5 %, so the band is
    [0, 2], where a t-interval would be 1 ± 4.30/√3 = [−1.48, 3.48]; a step only seed 2 covers
    has a band of its value alone; a step no seed covers is NaN."""
    nan = np.nan
    curves = np.array([[0.0, 0.0, nan, nan], [1.0, 1.0, nan, nan], [2.0, 2.0, 5.0, nan]])
    mean, low, high = bootstrap_mean_band(curves, reps=4000)
    assert np.allclose(mean[:3], [1.0, 1.0, 5.0]) and np.isnan(mean[3])
    assert np.allclose(low[:3], [0.0, 0.0, 5.0]) and np.allclose(high[:3], [2.0, 2.0, 5.0])
    assert np.isnan(low[3]) and np.isnan(high[3])
    rng = np.random.default_rng(1)
    spread = rng.standard_cauchy((3, 50))  # heavy tails: a t-interval would reach far out
    mean, low, high = bootstrap_mean_band(spread)
    ulp = 1e-9  # the mean of three equal values can round off by an ulp
    assert np.all(low >= spread.min(axis=0) - ulp) and np.all(high <= spread.max(axis=0) + ulp)
    assert np.all(low <= mean + ulp) and np.all(mean <= high + ulp)
    # against a loop: the 2.5 and 97.5 percentiles of the means of resampled seeds
    rows = np.random.default_rng(7).integers(0, 3, size=(500, 3))
    by_loop = np.percentile([spread[r].mean(axis=0) for r in rows], [2.5, 97.5], axis=0)
    assert np.allclose(bootstrap_mean_band(spread, reps=500, seed=7)[1:], by_loop)


def visible_tick_labels(axis: Axis, renderer: object) -> list[tuple[str, object]]:
    """(text, window extent) of every labelled tick inside the axis' view."""
    low, high = sorted(axis.get_view_interval())
    labelled = []
    for ticks in (axis.get_major_ticks(), axis.get_minor_ticks()):
        for tick in ticks:
            text = tick.label1.get_text()
            if tick.label1.get_visible() and text and low <= tick.get_loc() <= high:
                labelled.append((text, tick.label1.get_window_extent(renderer)))
    return labelled


def test_log_axis_tick_labels_do_not_overlap(tmp_path: Path) -> None:
    """Gradient statistics spanning a fraction of a decade (the 300-800 that gave
    "3×10²4×10²6×10²"), a few decades, eight decades; and a log step axis."""
    spans = {"A": (300, 800), "B": (250, 300), "C": (5, 5000), "D": (1e-3, 1e5), "F": (0.9, 1.1)}
    spans |= {"G": (0.4, 6), "H": (0.02, 0.9)}  # 1.2 and 1.7 decades
    for env, (low, high) in spans.items():
        values = np.geomspace(low, high, 10)
        for seed in range(2):
            rows = [
                {"global_step": step, "grad/pathwise/variance": v, "grad/pathwise/snr": 1 / v}
                for step, v in zip(range(100, 1100, 100), values, strict=True)
            ]
            rows += [{"global_step": 1000, "grad/variance_ratio_score_over_pathwise": high}]
            make_run(tmp_path, "sac", env, seed, rows + evals([100, 1000], [0, 1]))
    for seed in range(3):  # W: 1000 and 200000 steps, so steps are on a log axis
        make_run(tmp_path, "sac", "W", seed, evals([300, 600, 1000], [0, 1, 2]))
        steps = [2000, 20_000, 60_000, 200_000]
        ppo = [
            {"global_step": s, "grad/score/variance_per_step": 450 + s / 1000}
            | {"grad/score/snr_per_step": 0.3 + s / 1e6}
            for s in steps
        ]
        make_run(tmp_path, "ppo", "W", seed, ppo + evals(steps, [0, 1, 2, 3]))
    for seed in range(3):  # V: a log step axis spanning less than a decade (700 to 5000)
        for label, steps in (("sac", [700, 850, 1000]), ("ppo", [1500, 3000, 5000])):
            grads = [
                {"global_step": s, "grad/score/variance": 300 + s / 10, "grad/score/snr": 0.3}
                for s in steps
            ]
            make_run(tmp_path, label, "V", seed, grads + evals(steps, [0, 1, 2]))
    runs, _ = read_runs(tmp_path)
    fig = gradients_figure(group_runs(runs), ["sac", "ppo"])
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    checked, shown = 0, {}
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() != "log":
                continue
            labels = visible_tick_labels(axis, renderer)
            assert len(labels) >= 2, (ax.get_title(), labels)
            assert all(not tick.label1.get_text() for tick in axis.get_minor_ticks())
            for (a, box_a), (b, box_b) in combinations(labels, 2):
                assert not box_a.overlaps(box_b), (ax.get_title(), a, b)
            shown[ax.get_title(), axis.axis_name] = [text for text, _ in labels]
            checked += 1
    assert checked == 7 * 3 + 2 * 2 * 2  # A-H: 3 log y axes; W, V: variance and SNR, x and y
    assert shown["A: gradient variance (trace)", "y"] == ["400", "600", "800"]
    assert shown["V: gradient variance (trace)", "x"] == ["2000", "4000"]
    assert len(shown["D: gradient variance (trace)", "y"]) <= 5  # 8 decades: every other one
    assert shown["G: gradient variance (trace)", "y"] == ["0.5", "1", "2", "5"]
    assert shown["H: gradient variance (trace)", "y"] == ["0.02", "0.05", "0.1", "0.2", "0.5", "1"]


def test_estimators_against_the_exact_gradient(tmp_path: Path) -> None:
    """Runs that log their training estimator's bias against the exact gradient get a table of
    its medians (over all records of all seeds) and exact.png; other runs get neither."""
    study = tmp_path / "study"
    biases = {"score": [0.02, 0.04, 0.03], "gumbel_softmax": [0.3, 0.5, 0.4]}
    for label, estimator in (("score", "score"), ("gumbel-0.5", "gumbel_softmax")):
        for seed in range(2):
            rows = evals([1000, 2000], [100.0, 200.0 + seed])
            for i, bias in enumerate(biases[estimator]):
                stats = {"bias": bias + seed, "bias_se": 0.01, "bias_noise_floor": 0.05}
                stats |= {"variance": 10.0 * (i + 1), "cosine_exact": 0.9, "snr": 2.0}
                row = {f"grad/{estimator}/{k}": v for k, v in stats.items()}
                row["grad/exact/snr"] = 5.0  # measured as well, not trained with
                rows.append({"global_step": 500 * (i + 1), **row})
            config = {"agent": {"name": "sac_discrete", "actor_estimator": estimator}}
            make_run(study, label, "CartPole-v1", seed, rows, config=config)
    make_run(study, "pathwise", "CartPole-v1", 0, evals([1000], [50.0]))
    report = write_report(study)
    text = report.path.read_text()
    section = text.split("## Against the exact gradient\n", 1)[1]
    lines = [line for line in section.splitlines() if line.startswith("| CartPole")]
    cells = {
        row[1]: row for row in ([c.strip() for c in line.strip("|").split("|")] for line in lines)
    }
    assert set(cells) == {"score", "gumbel-0.5"}  # the pathwise run logged no bias
    # medians over 6 records: score 0.02..0.04 and 1.02..1.04 -> (0.04 + 1.02) / 2
    assert cells["score"][2] == "score" and cells["score"][3] == "2"
    assert float(cells["score"][4]) == pytest.approx(0.53)
    assert float(cells["gumbel-0.5"][4]) == pytest.approx(0.9)
    assert float(cells["gumbel-0.5"][7]) == pytest.approx(20.0)
    assert (study / "exact.png").is_file() and study / "exact.png" in report.figures
    # gradients.png: each label's curves are those of the estimator it trains with
    runs, _ = read_runs(study)
    fig = gradients_figure(group_runs(runs), ["score", "gumbel-0.5", "pathwise"])
    drawn = {line.get_gid() for ax in fig.axes for line in ax.get_lines()}
    assert drawn == {"score: score", "gumbel-0.5: gumbel_softmax"}


def test_no_exact_section_without_exact_measurements(tmp_path: Path) -> None:
    study = tmp_path / "study"
    make_run(study, "pathwise", "Pendulum-v1", 0, evals([1000], [50.0]))
    report = write_report(study)
    assert "Against the exact gradient" not in report.path.read_text()
    assert not (study / "exact.png").exists()
