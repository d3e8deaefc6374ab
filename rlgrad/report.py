"""``rlgrad report DIR``: a study's finished runs as a table per env, two figures and report.md.

It reads only run directories (``config.yaml``, ``metrics.jsonl``, ``result.json``) under DIR,
grouping runs by env (``env.id``) and estimator (``logging.job_type``, which ``rlgrad compare``
sets to the estimator's label; the agent's name when unset). Thresholds for "steps to
threshold" come from the study's ``study.yaml`` unless given.

Per (env, estimator), over its seeds:

* final eval return: each seed's last ``eval/return_mean``; mean ± sample std across seeds;
* AUC: each seed's area under its ``eval/return_mean`` curve (trapezoids over environment
  steps) divided by the steps it spans, i.e. the mean return over training; mean across seeds;
* steps to threshold: each seed's first evaluation at which ``eval/return_mean`` ≥ threshold;
  the median across seeds (a seed that never reaches it counts as infinitely many steps);
* median SNR (per measured estimator) and median variance ratio: the median of every finite
  ``grad/<estimator>/snr`` (or ``snr_per_step``, as REINFORCE and PPO log it) and
  ``grad/variance_ratio_score_over_pathwise`` record of all seeds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import yaml

from rlgrad.errors import UsageError

RESULT_FILE = "result.json"  # rlgrad.runner.RESULT_FILE, without importing torch here
EVAL_KEY = "eval/return_mean"
EPISODE_KEY = "charts/episodic_return"
RATIO_KEY = "grad/variance_ratio_score_over_pathwise"
REPORT_FILE = "report.md"


@dataclass
class Run:
    """One finished run: where it is, how it is grouped, and its metric rows."""

    path: Path
    label: str
    env: str
    seed: int
    rows: list[dict[str, float]] = field(repr=False)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of every row that records ``key``, in logging order."""
        points = [(row["global_step"], row[key]) for row in self.rows if key in row]
        if not points:
            return np.empty(0), np.empty(0)
        steps, values = zip(*points, strict=True)
        return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)

    @cached_property
    def keys(self) -> set[str]:
        return {key for row in self.rows for key in row}

    def grad_series(self, estimator: str, statistic: str) -> tuple[np.ndarray, np.ndarray]:
        """``grad/<estimator>/<statistic>``, or its ``_per_step`` form (on-policy agents)."""
        for key in (f"grad/{estimator}/{statistic}", f"grad/{estimator}/{statistic}_per_step"):
            if key in self.keys:
                return self.series(key)
        return np.empty(0), np.empty(0)

    def grad_estimators(self) -> set[str]:
        """The ``<estimator>`` of every ``grad/<estimator>/snr[_per_step]`` the run logged."""
        return {
            key.split("/")[1]
            for key in self.keys
            if key.startswith("grad/")
            and key.count("/") == 2
            and key.split("/")[2] in ("snr", "snr_per_step")
        }


@dataclass
class GroupStats:
    """The report's row for one (env, estimator) group."""

    env: str
    label: str
    seeds: int
    final_mean: float
    final_std: float
    auc: float
    steps_to_threshold: float | None
    reached: int
    median_snr: dict[str, float]
    median_ratio: float | None


def read_runs(directory: Path) -> tuple[list[Run], int]:
    """The finished runs under ``directory`` and the number of unfinished run directories."""
    if not directory.is_dir():
        raise UsageError(f"no such study folder: {directory}")
    runs: list[Run] = []
    for result in sorted(directory.rglob(RESULT_FILE)):
        run_dir = result.parent
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        with open(run_dir / "metrics.jsonl", encoding="utf-8") as lines:
            rows = [json.loads(line) for line in lines if line.strip()]
        label = config["logging"].get("job_type") or config["agent"]["name"]
        runs.append(Run(run_dir, label, config["env"]["id"], int(config["seed"]), rows))
    started = sum(1 for _ in directory.rglob("metrics.jsonl"))
    if not runs:
        raise UsageError(f"no finished runs under {directory} (no {RESULT_FILE} found)")
    return runs, started - len(runs)


def final_return(run: Run) -> float:
    """The last eval return; NaN for a run that never evaluated."""
    values = run.series(EVAL_KEY)[1]
    return float(values[-1]) if len(values) else math.nan


def mean_return_over_training(run: Run) -> float:
    """Area under the eval-return curve divided by the steps it spans."""
    steps, values = run.series(EVAL_KEY)
    if len(steps) < 2 or steps[-1] == steps[0]:
        return final_return(run)
    area = float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(steps)))
    return area / float(steps[-1] - steps[0])


def steps_to_threshold(run: Run, threshold: float) -> float:
    """The first evaluation step with eval return ≥ ``threshold``; ``inf`` if none."""
    steps, values = run.series(EVAL_KEY)
    reached = np.flatnonzero(values >= threshold)
    return float(steps[reached[0]]) if len(reached) else math.inf


def pooled_median(arrays: list[np.ndarray]) -> float | None:
    """The median of every finite value in ``arrays``; None if there is none."""
    values = np.concatenate([np.empty(0), *arrays])
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else None


def group_runs(runs: list[Run], order: list[str] | None = None) -> dict[str, dict[str, list[Run]]]:
    """env → estimator label → runs (by seed); labels in ``order`` first, then alphabetical."""
    known = order or []
    labels = [lab for lab in known if any(r.label == lab for r in runs)]
    labels += sorted({r.label for r in runs} - set(labels))
    groups: dict[str, dict[str, list[Run]]] = {}
    for env in sorted({r.env for r in runs}):
        groups[env] = {}
        for label in labels:
            members = sorted(
                (r for r in runs if r.env == env and r.label == label), key=lambda r: r.seed
            )
            if members:
                groups[env][label] = members
    return groups


def group_stats(env: str, label: str, runs: list[Run], threshold: float | None) -> GroupStats:
    finals = np.array([final_return(r) for r in runs])
    reach = (
        np.array([steps_to_threshold(r, threshold) for r in runs])
        if threshold is not None
        else None
    )
    estimators = sorted(set().union(*(r.grad_estimators() for r in runs)))
    snr = {est: pooled_median([r.grad_series(est, "snr")[1] for r in runs]) for est in estimators}
    return GroupStats(
        env=env,
        label=label,
        seeds=len(runs),
        final_mean=float(finals.mean()),
        final_std=float(finals.std(ddof=1)) if len(finals) > 1 else 0.0,
        auc=float(np.mean([mean_return_over_training(r) for r in runs])),
        steps_to_threshold=float(np.median(reach)) if reach is not None else None,
        reached=int(np.isfinite(reach).sum()) if reach is not None else 0,
        median_snr={est: v for est, v in snr.items() if v is not None},
        median_ratio=pooled_median([r.series(RATIO_KEY)[1] for r in runs]),
    )


def _num(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.4g}"


def env_table(stats: list[GroupStats], threshold: float | None) -> str:
    """One markdown table: a row per estimator."""
    estimators = sorted(set().union(*(s.median_snr for s in stats)))
    header = ["estimator", "seeds", "final eval return", "AUC (mean return)"]
    header += [f"steps to ≥ {threshold:g}"] if threshold is not None else []
    header += [f"median SNR ({est})" for est in estimators] + ["median variance ratio"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for s in stats:
        cells = [s.label, str(s.seeds), f"{_num(s.final_mean)} ± {_num(s.final_std)}", _num(s.auc)]
        if threshold is not None:
            steps = s.steps_to_threshold
            shown = f"{steps:.0f}" if steps is not None and math.isfinite(steps) else "–"
            cells.append(f"{shown} ({s.reached}/{s.seeds})")
        cells += [_num(s.median_snr.get(est)) for est in estimators] + [_num(s.median_ratio)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


DEFINITIONS = """\
Each row is one estimator over its seeds. *final eval return*: each seed's last
`eval/return_mean`, mean ± sample standard deviation across seeds. *AUC*: the area under each
seed's `eval/return_mean` curve divided by the environment steps it spans (the mean return over
training), averaged across seeds. *steps to ≥ t*: the median over seeds of the first evaluation
with `eval/return_mean` ≥ t (a seed that never gets there counts as never), and how many seeds
got there. *median SNR (e)*: the median of every `grad/e/snr` record of all seeds (on-policy
agents: `grad/e/snr_per_step`), for each gradient estimator e measured. *median variance
ratio*: the same for `grad/variance_ratio_score_over_pathwise` (score-function over pathwise
per-sample variance)."""


@dataclass
class Report:
    path: Path
    stats: list[GroupStats]
    figures: list[Path]


def write_report(directory: Path, threshold: float | None = None) -> Report:
    """Write ``returns.png``, ``gradients.png`` and ``report.md`` into ``directory``.

    ``threshold`` (one for every env) replaces the study's thresholds from ``study.yaml``.
    """
    from rlgrad.report_figures import plot_gradients, plot_returns
    from rlgrad.study_spec import read_spec

    runs, unfinished = read_runs(directory)
    spec = read_spec(directory)
    groups = group_runs(runs, list(spec.estimators) if spec else None)
    labels = list(dict.fromkeys(label for by_label in groups.values() for label in by_label))
    figures = [
        plot_returns(groups, labels, directory / "returns.png"),
        plot_gradients(groups, labels, directory / "gradients.png"),
    ]
    name = spec.name if spec else directory.name
    left_out = f" ({unfinished} unfinished or failed left out)" if unfinished else ""
    parts = [
        f"# Study `{name}`: estimator stability",
        f"{len(runs)} finished runs{left_out}, written by `rlgrad report`.",
        *(f"![{path.stem}]({path.name})" for path in figures),
    ]
    all_stats: list[GroupStats] = []
    for env, by_label in groups.items():
        env_threshold = (
            threshold if threshold is not None else (spec.threshold_for(env) if spec else None)
        )
        stats = [
            group_stats(env, label, members, env_threshold) for label, members in by_label.items()
        ]
        all_stats += stats
        parts += [f"## {env}", env_table(stats, env_threshold)]
    parts.append(DEFINITIONS)
    path = directory / REPORT_FILE
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return Report(path, all_stats, figures)
