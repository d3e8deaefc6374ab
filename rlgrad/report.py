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

Against the exact gradient (runs of agents that log it, such as ``sac_discrete``, whose exact
gradient over a few actions is at hand): for each (env, estimator label) whose runs log
``grad/<e>/bias`` for the estimator e they train with (``agent.actor_estimator``), the median
over all records of all seeds of its relative bias ‖mean ĝ − g‖/‖g‖, the bias's standard error
and noise floor, its per-state variance and its cosine to the exact gradient; ``exact.png``
draws them over training.

Per env, with ``rliable`` (Agarwal et al. 2021, "Deep RL at the edge of the statistical
precipice"), each env being one task so that the stratified bootstrap resamples seeds:

* the IQM (interquartile mean) of final return and of AUC over seeds, with a 95 % percentile
  stratified-bootstrap confidence interval;
* the probability of improvement P(X > Y) of the final return for each pair of estimators, with
  its 95 % interval;
* performance profiles of final return and AUC: the fraction of runs above each threshold τ,
  with 95 % bands.

The bootstrap draws ``BOOTSTRAP_REPS`` resamples from numpy's global generator seeded with
``BOOTSTRAP_SEED`` for each call (and restored afterwards), so a report is deterministic.

Runs are pooled only when their configs differ in nothing but ``seed``, ``name`` and
``logging``: runs under one label whose configs differ otherwise are reported apart (the label
gets ``[key=value,...]`` of the differences), and two runs with one config and one seed are
refused (a seed counts once).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rlgrad.errors import UsageError

RESULT_FILE = "result.json"  # rlgrad.runner.RESULT_FILE, without importing torch here
EVAL_KEY = "eval/return_mean"
EPISODE_KEY = "charts/episodic_return"
RATIO_KEY = "grad/variance_ratio_score_over_pathwise"
EXACT_STATISTICS = ("bias", "bias_se", "bias_noise_floor", "variance", "cosine_exact")
"""``grad/<e>/<statistic>`` of an estimator measured against the exact gradient."""
REPORT_FILE = "report.md"

BOOTSTRAP_SEED = 0
"""Seed of numpy's global generator for each rliable bootstrap (then restored)."""
BOOTSTRAP_REPS = 2000
"""Bootstrap resamples per interval: enough for a 95 % percentile interval, and fast."""
CONFIDENCE = 0.95
PROFILE_POINTS = 101
"""Thresholds τ at which a performance profile is evaluated (evenly over the scores' range)."""
POOLING_IGNORES = ("seed", "name", "logging")
"""Top-level config keys in which runs pooled as seeds of one estimator may differ."""
SHOWN_DIFFERENCES = 3
"""At most this many differing config keys go into the label of runs reported apart."""
FINAL_METRIC = "final eval return"
AUC_METRIC = "AUC (mean return)"
WANDB_JOB_TYPE = "report"


@dataclass
class Run:
    """One finished run: where it is, how it is grouped, and its metric rows."""

    path: Path
    label: str
    env: str
    seed: int
    rows: list[dict[str, float]] = field(repr=False)
    config: dict[str, Any] = field(default_factory=dict, repr=False)

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


def trained_estimator(run: Run) -> str | None:
    """The estimator the run's actor trains with (``agent.actor_estimator``), when the run
    measured it against the exact gradient (logged ``grad/<e>/bias``); else None."""
    estimator = (run.config.get("agent") or {}).get("actor_estimator")
    return estimator if estimator and f"grad/{estimator}/bias" in run.keys else None


@dataclass(frozen=True)
class ExactComparison:
    """One (env, label) group's training estimator against the exact gradient: the median of
    each of :data:`EXACT_STATISTICS` over every record of every seed."""

    env: str
    label: str
    estimator: str
    seeds: int
    medians: dict[str, float | None]


def exact_comparisons(env: str, by_label: dict[str, list[Run]]) -> list[ExactComparison]:
    """An :class:`ExactComparison` per label whose runs all measured their training estimator
    against the exact gradient (one estimator across the label's seeds)."""
    out = []
    for label, runs in by_label.items():
        estimators = {trained_estimator(run) for run in runs}
        if len(estimators) != 1 or None in estimators:
            continue
        estimator = estimators.pop()
        assert estimator is not None
        medians = {
            stat: pooled_median([r.series(f"grad/{estimator}/{stat}")[1] for r in runs])
            for stat in EXACT_STATISTICS
        }
        out.append(ExactComparison(env, label, estimator, len(runs), medians))
    return out


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its 95 % stratified-bootstrap confidence interval."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Improvement:
    """P(X > Y): the probability that a run of ``x`` beats a run of ``y`` on one env."""

    env: str
    x: str
    y: str
    estimate: Estimate


@dataclass(frozen=True)
class Profile:
    """A performance profile: the fraction of runs scoring above each τ, with its 95 % band."""

    taus: np.ndarray
    value: np.ndarray
    low: np.ndarray
    high: np.ndarray


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
    final_iqm: Estimate | None = None
    auc_iqm: Estimate | None = None


@dataclass
class EnvResult:
    """One env's rows, the pairwise probabilities of improvement and the profiles."""

    env: str
    threshold: float | None
    stats: list[GroupStats]
    improvements: list[Improvement]
    profiles: dict[str, dict[str, Profile]]
    """metric (``FINAL_METRIC``, ``AUC_METRIC``) → estimator → profile."""
    exact: list[ExactComparison] = field(default_factory=list)
    """The labels measured against the exact gradient (see :func:`exact_comparisons`)."""


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
        env = config["env"]["id"]
        runs.append(Run(run_dir, label, env, int(config["seed"]), rows, config))
    started = sum(1 for _ in directory.rglob("metrics.jsonl"))
    if not runs:
        raise UsageError(f"no finished runs under {directory} (no {RESULT_FILE} found)")
    return runs, started - len(runs)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def pooled_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config as ``{dotted.key: value}``, without the keys (``POOLING_IGNORES``) in
    which the seeds of one estimator may differ."""
    return {
        key: value
        for key, value in _flatten(config).items()
        if key.split(".", 1)[0] not in POOLING_IGNORES
    }


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def separate_unlike_runs(runs: list[Run]) -> list[str]:
    """Pool only runs that differ in nothing but their seed, and count each seed once.

    Runs of one (env, label) whose configs differ in more than ``POOLING_IGNORES`` (a folder of
    unrelated ``rlgrad train`` runs, all labelled by their agent's name) are relabelled
    ``label[key=value,...]`` with the keys in which they differ, so that each is its own row.
    Two runs with one config and one seed are refused (``UsageError``). Returns one note per
    label that was split.
    """
    notes: list[str] = []
    by_group: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        by_group.setdefault((run.env, run.label), []).append(run)
    taken = {run.label for run in runs}
    for (env, label), members in by_group.items():
        flats = [pooled_config(run.config) for run in members]
        prints = [_canonical(flat) for flat in flats]
        distinct = list(dict.fromkeys(prints))
        if len(distinct) == 1:
            continue
        keys = sorted({key for flat in flats for key in flat})
        differing = [
            key for key in keys if len({_canonical(flat.get(key, "<unset>")) for flat in flats}) > 1
        ]
        names: dict[str, str] = {}
        for fingerprint in distinct:
            flat = flats[prints.index(fingerprint)]
            shown = [
                f"{key}={_canonical(flat.get(key, '<unset>')).strip(chr(34))}"
                for key in differing[:SHOWN_DIFFERENCES]
            ]
            if len(differing) > SHOWN_DIFFERENCES:
                shown.append(f"+{len(differing) - SHOWN_DIFFERENCES} more")
            name = base = f"{label}[{','.join(shown)}]"
            number = 2
            while name in taken:
                name, number = f"{base}#{number}", number + 1
            taken.add(name)
            names[fingerprint] = name
        for run, fingerprint in zip(members, prints, strict=True):
            run.label = names[fingerprint]
        counts = Counter(prints)
        apart = ", ".join(
            f"`{names[fp]}` ({counts[fp]} run{'s' if counts[fp] > 1 else ''})" for fp in distinct
        )
        notes.append(
            f"Runs labelled `{label}` on {env} differ in more than their seed "
            f"({', '.join(differing)}), so they are reported apart: {apart}."
        )
    seen: dict[tuple[str, str, int], Run] = {}
    for run in runs:
        key = (run.env, run.label, run.seed)
        if key in seen:
            raise UsageError(
                f"{seen[key].path} and {run.path} are one run twice ({run.label} on {run.env}, "
                f"seed {run.seed}, the same config); a seed counts once: move one out of the folder"
            )
        seen[key] = run
    return notes


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


# ---- rliable: IQM, probability of improvement, performance profiles ------------------------


@contextmanager
def seeded_bootstrap(seed: int = BOOTSTRAP_SEED) -> Iterator[None]:
    """rliable's bootstraps draw their resamples with ``np.random.choice``, numpy's global
    generator (rliable 1.2 passes ``random_state`` on to arch, but does not draw from it):
    seed that generator for one call and give the caller its state back afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def score_matrices(scores: dict[str, list[float]]) -> dict[str, np.ndarray]:
    """rliable's layout: per estimator an array (runs, tasks) with one task, this env; a run
    without a score (it never evaluated) is left out, and so is an estimator without one."""
    matrices = {}
    for label, values in scores.items():
        array = np.asarray(values, dtype=float)
        array = array[np.isfinite(array)]
        if len(array):
            matrices[label] = array.reshape(-1, 1)
    return matrices


def iqm_estimates(
    scores: dict[str, list[float]], reps: int = BOOTSTRAP_REPS
) -> dict[str, Estimate]:
    """Per estimator, the IQM over its runs and the 95 % stratified-bootstrap interval
    (``rliable.library.get_interval_estimates`` of ``rliable.metrics.aggregate_iqm``)."""
    from rliable import library, metrics

    matrices = score_matrices(scores)
    if not matrices:
        return {}

    def iqm(matrix: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(matrix)])

    with seeded_bootstrap():
        points, intervals = library.get_interval_estimates(
            matrices, iqm, reps=reps, confidence_interval_size=CONFIDENCE
        )
    return {
        label: Estimate(float(points[label][0]), *map(float, intervals[label][:, 0]))
        for label in matrices
    }


def improvement_estimates(
    env: str, scores: dict[str, list[float]], reps: int = BOOTSTRAP_REPS
) -> list[Improvement]:
    """P(X > Y) for each pair of estimators (in order), with its 95 % interval (rliable's
    ``probability_of_improvement``, each estimator's runs resampled independently)."""
    from rliable import library, metrics

    matrices = score_matrices(scores)
    pairs = {(x, y): (matrices[x], matrices[y]) for x, y in combinations(matrices, 2)}
    if not pairs:
        return []

    def improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.array([metrics.probability_of_improvement(x, y)])

    with seeded_bootstrap():
        points, intervals = library.get_interval_estimates(
            pairs, improvement, reps=reps, confidence_interval_size=CONFIDENCE
        )
    return [
        Improvement(env, x, y, Estimate(float(points[x, y][0]), *map(float, intervals[x, y][:, 0])))
        for x, y in pairs
    ]


def profile_taus(scores: dict[str, list[float]]) -> np.ndarray:
    """``PROFILE_POINTS`` thresholds from a little below the lowest score to a little above the
    highest, so that each profile starts at 1 and ends at 0."""
    values = np.concatenate([matrix.ravel() for matrix in score_matrices(scores).values()])
    low, high = float(values.min()), float(values.max())
    pad = 0.05 * (high - low) or max(1.0, 0.05 * abs(high))
    return np.linspace(low - pad, high + pad, PROFILE_POINTS)


def _fraction_above(matrix: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """rliable's score distribution (``library.run_score_deviation`` at each τ), vectorized."""
    return np.mean(matrix.reshape(-1, 1) > np.asarray(taus)[None, :], axis=0)


def performance_profiles(
    scores: dict[str, list[float]], reps: int = BOOTSTRAP_REPS
) -> dict[str, Profile]:
    """Per estimator, the fraction of its runs scoring above each τ of ``profile_taus``, with a
    95 % band (``rliable.library.create_performance_profile``)."""
    from rliable import library

    matrices = score_matrices(scores)
    if not matrices:
        return {}
    taus = profile_taus(scores)
    with seeded_bootstrap():
        profiles, intervals = library.create_performance_profile(
            matrices,
            taus,
            custom_profile_func=_fraction_above,
            reps=reps,
            confidence_interval_size=CONFIDENCE,
        )
    return {
        label: Profile(taus, profiles[label], intervals[label][0], intervals[label][1])
        for label in matrices
    }


def env_result(
    env: str,
    by_label: dict[str, list[Run]],
    threshold: float | None,
    reps: int = BOOTSTRAP_REPS,
) -> EnvResult:
    """One env's table rows, IQMs, probabilities of improvement and profiles."""
    stats = [group_stats(env, label, members, threshold) for label, members in by_label.items()]
    finals = {label: [final_return(r) for r in members] for label, members in by_label.items()}
    aucs = {
        label: [mean_return_over_training(r) for r in members]
        for label, members in by_label.items()
    }
    final_iqm, auc_iqm = iqm_estimates(finals, reps), iqm_estimates(aucs, reps)
    for row in stats:
        row.final_iqm, row.auc_iqm = final_iqm.get(row.label), auc_iqm.get(row.label)
    profiles = {
        FINAL_METRIC: performance_profiles(finals, reps),
        AUC_METRIC: performance_profiles(aucs, reps),
    }
    improvements = improvement_estimates(env, finals, reps)
    return EnvResult(
        env, threshold, stats, improvements, profiles, exact_comparisons(env, by_label)
    )


# ---- report.md -----------------------------------------------------------------------------


def _num(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _estimate(estimate: Estimate | None) -> str:
    if estimate is None:
        return "–"
    return f"{_num(estimate.value)} [{_num(estimate.low)}, {_num(estimate.high)}]"


def env_table(stats: list[GroupStats], threshold: float | None) -> str:
    """One markdown table: a row per estimator."""
    estimators = sorted(set().union(*(s.median_snr for s in stats)))
    header = ["estimator", "seeds", FINAL_METRIC, "final return IQM [95% CI]"]
    header += [AUC_METRIC, "AUC IQM [95% CI]"]
    header += [f"steps to ≥ {threshold:g}"] if threshold is not None else []
    header += [f"median SNR ({est})" for est in estimators] + ["median variance ratio"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for s in stats:
        cells = [s.label, str(s.seeds), f"{_num(s.final_mean)} ± {_num(s.final_std)}"]
        cells += [_estimate(s.final_iqm), _num(s.auc), _estimate(s.auc_iqm)]
        if threshold is not None:
            steps = s.steps_to_threshold
            shown = f"{steps:.0f}" if steps is not None and math.isfinite(steps) else "–"
            cells.append(f"{shown} ({s.reached}/{s.seeds})")
        cells += [_num(s.median_snr.get(est)) for est in estimators] + [_num(s.median_ratio)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


IMPROVEMENT_SECTION = "Probability of improvement"
EXACT_SECTION = "Against the exact gradient"
EXACT_COLUMNS = {
    "bias": "median bias",
    "bias_se": "median bias SE",
    "bias_noise_floor": "median noise floor",
    "variance": "median variance",
    "cosine_exact": "median cosine to exact",
}


def exact_table(comparisons: list[ExactComparison]) -> str:
    """A row per (env, label): its training estimator's medians against the exact gradient."""
    header = ["env", "estimator", "trains with", "seeds", *EXACT_COLUMNS.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for c in comparisons:
        cells = [c.env, c.label, c.estimator, str(c.seeds)]
        cells += [_num(c.medians[stat]) for stat in EXACT_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


EXACT_DEFINITIONS = """\
Each row is one estimator label over its seeds, measured at every diagnostics step on a batch
of replay states against the exact gradient g (the sum over the actions) of the same objective
at the same parameters. *bias*: ‖ḡ − g‖/‖g‖ with ḡ the mean of the per-state estimates;
*bias SE*: its standard error (delta method); *noise floor*: √(tr Σ̂/n)/‖g‖, the value an
unbiased estimator reads as on n states (a bias near it is no bias); *variance*: tr Σ̂ of one
state's estimate; *cosine*: cos(ḡ, g). Each cell is the median over all measurements of all
seeds; exact.png draws them over training (mean over seeds in log10, 95 % band)."""


def improvement_table(improvements: list[Improvement]) -> str:
    """Every pair of estimators of every env: P(X > Y) of final eval return and its interval."""
    header = ["env", "X", "Y", "P(X > Y) [95% CI]"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for imp in improvements:
        cells = [imp.env, imp.x, imp.y, _estimate(imp.estimate)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


DEFINITIONS = """\
Each row is one estimator over its seeds. *final eval return*: each seed's last
`eval/return_mean`, mean ± sample standard deviation across seeds. *AUC*: the area under each
seed's `eval/return_mean` curve divided by the environment steps it spans (the mean return over
training), averaged across seeds. *IQM [95% CI]*: the interquartile mean across seeds (the mean
of the middle 50 %; with fewer than 4 seeds, the mean) and its {confidence:.0%} percentile
stratified-bootstrap interval ({reps} resamples, seed {seed}), computed by `rliable` with each
env as one task; over a handful of seeds such an interval is a floor on the uncertainty, not
its measure (over 2 seeds it can only span the two values). *steps to ≥ t*: the median over
seeds of the first evaluation with `eval/return_mean` ≥ t (a seed that never gets there counts
as never), and how many seeds got there. *median SNR (e)*: the median of every `grad/e/snr`
record of all seeds (on-policy agents: `grad/e/snr_per_step`), for each gradient estimator e
measured. *median variance ratio*: the same for `grad/variance_ratio_score_over_pathwise`
(score-function over pathwise per-sample variance). *P(X > Y)*: `rliable`'s probability of
improvement, the chance that a run of X ends with a higher final eval return than a run of Y
(ties count half), with its bootstrap interval; P(Y > X) = 1 − P(X > Y). *profiles.png*:
performance profiles, the fraction of runs whose final eval return (top) or AUC (bottom)
exceeds τ, with 95 % bands. The curves of returns.png and gradients.png are the mean over seeds
with, from 3 seeds on, the 95 % percentile-bootstrap band of that mean (seeds resampled; it
stays within the seeds' range); with fewer seeds each seed is drawn as its own line."""


@dataclass
class Report:
    path: Path
    stats: list[GroupStats]
    figures: list[Path]
    envs: list[EnvResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    name: str = ""
    """The study's name: its W&B group."""
    runs: list[Run] = field(default_factory=list, repr=False)
    reps: int = BOOTSTRAP_REPS

    @property
    def improvements(self) -> list[Improvement]:
        return [imp for env in self.envs for imp in env.improvements]


def _shared_logging(runs: list[Run], key: str) -> Any:
    """The runs' common ``logging.<key>``; None when they differ."""
    values = {_canonical((run.config.get("logging") or {}).get(key)) for run in runs}
    return json.loads(values.pop()) if len(values) == 1 else None


def write_report(
    directory: Path, threshold: float | None = None, *, reps: int | None = None
) -> Report:
    """Write ``returns.png``, ``gradients.png``, ``profiles.png`` and ``report.md`` into
    ``directory``.

    ``threshold`` (one for every env) replaces the study's thresholds from ``study.yaml``;
    ``reps`` is the number of bootstrap resamples of each interval (default
    ``BOOTSTRAP_REPS``).
    """
    from rlgrad.report_figures import plot_exact, plot_gradients, plot_profiles, plot_returns
    from rlgrad.study_spec import read_spec

    reps = reps or BOOTSTRAP_REPS
    runs, unfinished = read_runs(directory)
    notes = separate_unlike_runs(runs)
    spec = read_spec(directory)
    groups = group_runs(runs, list(spec.estimators) if spec else None)
    labels = list(dict.fromkeys(label for by_label in groups.values() for label in by_label))
    envs = [
        env_result(
            env,
            by_label,
            threshold if threshold is not None else (spec.threshold_for(env) if spec else None),
            reps,
        )
        for env, by_label in groups.items()
    ]
    figures = [
        plot_returns(groups, labels, directory / "returns.png"),
        plot_gradients(groups, labels, directory / "gradients.png"),
        plot_profiles(envs, labels, directory / "profiles.png"),
    ]
    comparisons = [c for result in envs for c in result.exact]
    if comparisons:
        figures.append(plot_exact(groups, envs, labels, directory / "exact.png"))
    name = spec.name if spec else (_shared_logging(runs, "group") or directory.resolve().name)
    left_out = f" ({unfinished} unfinished or failed left out)" if unfinished else ""
    parts = [
        f"# Study `{name}`: estimator stability",
        f"{len(runs)} finished runs{left_out}, written by `rlgrad report`.",
        *notes,
        *(f"![{path.stem}]({path.name})" for path in figures),
    ]
    for result in envs:
        parts += [f"## {result.env}", env_table(result.stats, result.threshold)]
    improvements = [imp for result in envs for imp in result.improvements]
    if improvements:
        parts += [
            f"## {IMPROVEMENT_SECTION}",
            "P(X > Y) of final eval return: the probability that a run of X beats a run of Y.",
            improvement_table(improvements),
        ]
    if comparisons:
        parts += [f"## {EXACT_SECTION}", exact_table(comparisons), EXACT_DEFINITIONS]
    parts.append(DEFINITIONS.format(confidence=CONFIDENCE, reps=reps, seed=BOOTSTRAP_SEED))
    path = directory / REPORT_FILE
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    stats = [row for result in envs for row in result.stats]
    return Report(path, stats, figures, envs, notes, name, runs, reps)


# ---- W&B -----------------------------------------------------------------------------------


def _cell(value: float | None) -> float | None:
    """A table cell: None for a missing or non-finite number (JSON has no NaN or ∞)."""
    return None if value is None or not math.isfinite(value) else float(value)


def aggregate_table(report: Report) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of every (env, estimator) row of the report, for a ``wandb.Table``."""
    estimators = sorted(set().union(*(s.median_snr for s in report.stats)))
    columns = ["env", "estimator", "seeds", "final_return_mean", "final_return_std"]
    for prefix in ("final_return_iqm", "auc_iqm"):
        columns += [prefix, f"{prefix}_low", f"{prefix}_high"]
    columns += ["auc_mean", "threshold", "steps_to_threshold", "seeds_reached"]
    columns += [f"median_snr_{est}" for est in estimators] + ["median_variance_ratio"]
    rows = []
    for result in report.envs:
        for s in result.stats:
            row: list[Any] = [s.env, s.label, s.seeds, _cell(s.final_mean), _cell(s.final_std)]
            for estimate in (s.final_iqm, s.auc_iqm):
                row += (
                    [_cell(estimate.value), _cell(estimate.low), _cell(estimate.high)]
                    if estimate
                    else [None] * 3
                )
            row += [_cell(s.auc), _cell(result.threshold), _cell(s.steps_to_threshold)]
            row += [s.reached if result.threshold is not None else None]
            row += [_cell(s.median_snr.get(est)) for est in estimators]
            rows.append([*row, _cell(s.median_ratio)])
    return columns, rows


def exact_rows(report: Report) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of every comparison against the exact gradient, for a ``wandb.Table``."""
    columns = [
        "env",
        "estimator",
        "trains_with",
        "seeds",
        *(f"median_{s}" for s in EXACT_STATISTICS),
    ]
    rows = [
        [c.env, c.label, c.estimator, c.seeds, *(_cell(c.medians[s]) for s in EXACT_STATISTICS)]
        for result in report.envs
        for c in result.exact
    ]
    return columns, rows


def improvement_rows(report: Report) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of every P(X > Y) of the report, for a ``wandb.Table``."""
    columns = ["env", "x", "y", "p_x_beats_y", "low", "high"]
    rows = [
        [imp.env, imp.x, imp.y, imp.estimate.value, imp.estimate.low, imp.estimate.high]
        for imp in report.improvements
    ]
    return columns, rows


def log_to_wandb(report: Report) -> str:
    """Log the report as one W&B run in the study's group (job type ``report``): the tables
    ``report/aggregate``, ``report/improvement`` (and ``report/exact_gradient``) and the
    figures. Offline unless a W&B key is configured (``WANDB_MODE`` wins); every wait is
    bounded. Returns the line to print."""
    import wandb

    from rlgrad.logging import resolve_wandb_mode, wandb_settings

    mode = resolve_wandb_mode("auto")
    if mode == "disabled":
        return "W&B: disabled (WANDB_MODE=disabled), nothing logged"
    os.environ.setdefault("WANDB_SILENT", "true")
    directory = report.path.parent
    try:
        run = wandb.init(
            mode=mode,
            dir=str(directory),
            project=_shared_logging(report.runs, "project") or "rlgrad",
            entity=_shared_logging(report.runs, "entity"),
            group=report.name,
            job_type=WANDB_JOB_TYPE,
            name=f"{report.name}/{WANDB_JOB_TYPE}",
            config={
                "study": report.name,
                "runs": len(report.runs),
                "bootstrap_reps": report.reps,
                "bootstrap_seed": BOOTSTRAP_SEED,
                "confidence": CONFIDENCE,
            },
            reinit="create_new",
            settings=wandb_settings(wandb),
        )
        try:
            logged: dict[str, Any] = {
                "report/aggregate": wandb.Table(*aggregate_table(report)),
                "report/improvement": wandb.Table(*improvement_rows(report)),
            }
            if any(result.exact for result in report.envs):
                logged["report/exact_gradient"] = wandb.Table(*exact_rows(report))
            logged |= {f"report/{path.stem}": wandb.Image(str(path)) for path in report.figures}
            run.log(logged)
            if mode == "offline":
                folder = Path(run.settings.sync_dir)
                where = f"W&B offline run: {folder} (upload: wandb sync {folder})"
            else:
                where = f"W&B run: {run.url or 'no URL (not logged in?)'}"
        finally:
            run.finish()
    except (wandb.errors.Error, OSError, TimeoutError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UsageError(
            f"W&B logging failed ({reason}); {report.path} is written; "
            "rerun with WANDB_MODE=offline to keep the W&B run on disk"
        ) from None
    return where
