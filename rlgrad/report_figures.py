"""The report's figures: one column per env, one colour per estimator.

From ``MIN_BAND_SEEDS`` seeds on, each estimator is one line, the mean over its seeds, with a
95 % band: each seed's curve is interpolated onto a common grid of environment steps (only
within the steps it covers) and the band is the percentile bootstrap interval of that mean,
seeds resampled with replacement (``BOOTSTRAP_REPS`` resamples, the same ones at every step,
from a generator seeded with ``BOOTSTRAP_SEED``), as the report's tables resample seeds. Unlike
a t-interval over 3 seeds (mean ± 4.3·s/√3, which drew InvertedPendulum returns above the
maximum of 1000 and gradient SNRs over 16 decades), it never leaves the range the seeds span.
With fewer seeds a band says nothing, so each seed's own curve is drawn (one line per seed, the
estimator's colour). Gradient statistics are averaged in log10, so their band is a geometric
one. On log axes only major ticks are labelled: decades (at most
``MAX_LOG_TICKS``) from ``FEW_DECADES`` on; 1, 2 and 5 times each power of ten below that;
a few round numbers when the axis spans less than a decade.

``profiles.png`` draws the performance profiles ``rlgrad.report`` computes with rliable, and
``exact.png`` (when runs measured their estimator against the exact gradient) each label's
training estimator's bias, variance and cosine to the exact gradient over training.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import (
    FuncFormatter,
    LogFormatterSciNotation,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)

from rlgrad.report import (
    AUC_METRIC,
    BOOTSTRAP_REPS,
    BOOTSTRAP_SEED,
    EPISODE_KEY,
    EVAL_KEY,
    FINAL_METRIC,
    RATIO_KEY,
    Run,
    trained_estimator,
)

if TYPE_CHECKING:
    from rlgrad.report import EnvResult

PANEL_INCHES = (5.0, 3.5)
DPI = 100
GRID_POINTS = 200
EPISODE_WINDOW = 10
"""Training episodic returns are smoothed by a trailing mean over this many episodes."""
LINESTYLES = {"pathwise": "-", "score": "--"}
MIN_BAND_SEEDS = 3
"""With fewer seeds than this, each seed is drawn as its own line instead of a mean and band."""
MAX_LOG_TICKS = 5
"""At most this many labelled decades on a log axis."""
FEW_DECADES = 2.0
"""A log axis spanning fewer decades than this labels 1, 2 and 5 times each power of ten, as
one spanning 1.2 decades (0.4 to 6) would otherwise show the single label 10⁰."""

Groups = dict[str, dict[str, list[Run]]]
Series = Callable[[Run], tuple[np.ndarray, np.ndarray]]
"""A run's (steps, values) of one quantity."""


def figure_pixels(n_envs: int, n_rows: int) -> tuple[int, int]:
    """(width, height) in pixels of a figure with ``n_rows`` panels per env."""
    return int(PANEL_INCHES[0] * n_envs * DPI), int(PANEL_INCHES[1] * n_rows * DPI)


def _trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each value and up to ``window - 1`` values before it."""
    sums = np.concatenate([[0.0], np.cumsum(values)])
    end = np.arange(1, len(values) + 1)
    start = np.maximum(end - window, 0)
    return (sums[end] - sums[start]) / (end - start)


def _prepared(run: Run, series: Series, log: bool, window: int) -> tuple[np.ndarray, np.ndarray]:
    """A run's finite (and, for ``log``, positive) points, in log10 for ``log``, smoothed."""
    steps, values = series(run)
    keep = np.isfinite(values) & ((values > 0) if log else True)
    steps, values = steps[keep], values[keep]
    if len(steps) == 0:
        return steps, values
    values = np.log10(values) if log else values
    if window > 1:
        values = _trailing_mean(values, window)
    return steps, values


def seed_curve(
    run: Run, series: Series, log: bool = False, window: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """One seed's own (steps, values) as drawn: finite points, smoothed over ``window``."""
    steps, values = _prepared(run, series, log, window)
    return steps, (10**values if log else values)


def bootstrap_mean_band(
    curves: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) over the rows (seeds) of ``curves`` (seeds × steps, NaN where a seed
    has no value): the mean of the seeds present at each step and the 2.5 and 97.5 percentiles
    of that mean over ``reps`` resamples of the seeds with replacement. Every resampled mean is
    a mean of the seeds' values, so low ≥ min and high ≤ max of the seeds at each step."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # steps no (resampled) seed covers
        mean = np.nanmean(curves, axis=0)
        rows = np.random.default_rng(seed).integers(0, len(curves), size=(reps, len(curves)))
        means = np.nanmean(curves[rows], axis=1)
        low, high = np.nanpercentile(means, [2.5, 97.5], axis=0)
    return mean, low, high


def seed_band(
    runs: list[Run], series: Series, grid: np.ndarray, log: bool = False, window: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) over seeds of ``series`` on ``grid`` (:func:`bootstrap_mean_band`, in
    log10 for ``log``); NaN where no seed has data."""
    curves = np.full((len(runs), len(grid)), np.nan)
    for i, run in enumerate(runs):
        steps, values = _prepared(run, series, log, window)
        if len(steps) == 0:
            continue
        inside = (grid >= steps[0]) & (grid <= steps[-1])
        curves[i, inside] = np.interp(grid[inside], steps, values)
    mean, low, high = bootstrap_mean_band(curves)
    if log:
        return 10**mean, 10**low, 10**high
    return mean, low, high


def step_grid(runs: list[Run], series: Series) -> np.ndarray:
    """Every step at which a run records ``series``, or ``GRID_POINTS`` even steps if more."""
    steps = np.unique(np.concatenate([np.empty(0), *(series(run)[0] for run in runs)]))
    if len(steps) > GRID_POINTS:
        return np.linspace(steps[0], steps[-1], GRID_POINTS)
    return steps


def _plot_seeds(
    ax: Axes,
    runs: list[Run],
    series: Series,
    color: str,
    label: str,
    linestyle: str = "-",
    log: bool = False,
    window: int = 1,
) -> bool:
    """One line per seed (gid ``label``), the legend naming the estimator once."""
    drew = False
    legend = f"{label} ({len(runs)} seed{'s' if len(runs) != 1 else ''}, each drawn)"
    for run in runs:
        steps, values = seed_curve(run, series, log=log, window=window)
        if len(steps) == 0:
            continue
        marker = "o" if len(steps) <= 30 else None
        ax.plot(
            steps,
            values,
            color=color,
            linestyle=linestyle,
            label="_nolegend_" if drew else legend,
            lw=1.0,
            marker=marker,
            ms=2.5,
            alpha=0.85,
            gid=label,
        )
        drew = True
    return drew


def _plot_band(
    ax: Axes, runs: list[Run], series: Series, color: str, label: str, **kwargs: Any
) -> bool:
    """One line with its band, or one line per seed with fewer than ``MIN_BAND_SEEDS``; False
    when no run records ``series``."""
    if len(runs) < MIN_BAND_SEEDS:
        return _plot_seeds(ax, runs, series, color, label, **kwargs)
    grid = step_grid(runs, series)
    if len(grid) == 0:
        return False
    linestyle = kwargs.pop("linestyle", "-")
    mean, low, high = seed_band(runs, series, grid, **kwargs)
    marker = "o" if len(grid) <= 30 else None
    ax.plot(
        grid,
        mean,
        color=color,
        linestyle=linestyle,
        label=label,
        lw=1.5,
        marker=marker,
        ms=3,
        gid=label,
    )
    ax.fill_between(grid, low, high, color=color, alpha=0.2, linewidth=0)
    return True


def _colors(labels: list[str]) -> dict[str, str]:
    return {label: f"C{i % 10}" for i, label in enumerate(labels)}


def wide_budgets(by_label: dict[str, list[Run]]) -> bool:
    """Whether the estimators' step budgets differ by 5× or more (then steps are on a log axis,
    so that an 8k-step SAC run and a 200k-step PPO run both show)."""
    budgets = [max(int(r.rows[-1]["global_step"]) for r in runs) for runs in by_label.values()]
    return max(budgets) >= 5 * max(min(budgets), 1)


def plain_number(value: float, _: Any = None) -> str:
    """A tick label in plain notation (300, 0.96, 2000), or m×10^e outside [0.001, 100000)."""
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.6g}"
    exponent = math.floor(math.log10(abs(value)))
    return rf"${value / 10**exponent:.3g}\times10^{{{exponent}}}$"


def tidy_log_axis(axis: Axis, low: float, high: float) -> None:
    """Label only major ticks of a log axis spanning [low, high], so that labels never run
    into each other and at least two show: at most ``MAX_LOG_TICKS`` decades (10², 10⁴, …)
    when it spans ``FEW_DECADES`` or more; 1, 2 and 5 times each power of ten (0.5, 1, 2, 5)
    when it spans one decade or more; else a few round numbers (300, 400, 600). All but the
    decades are written in plain notation. Minor ticks stay, unlabelled."""
    decades = np.log10(high / low) if 0 < low < high else 0.0
    if decades >= FEW_DECADES:
        axis.set_major_locator(LogLocator(base=10, numticks=MAX_LOG_TICKS))
        axis.set_major_formatter(LogFormatterSciNotation(base=10))
    elif decades >= 1:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(plain_number))
    else:
        axis.set_major_locator(MaxNLocator(nbins=3, min_n_ticks=2))
        axis.set_major_formatter(FuncFormatter(plain_number))
    axis.set_minor_locator(LogLocator(base=10, subs="auto", numticks=12))
    axis.set_minor_formatter(NullFormatter())


def _finish(
    ax: Axes, title: str, ylabel: str, drew: bool, log: bool = False, log_x: bool = False
) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("environment steps" + (" (log scale)" if log_x else ""), fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    if drew:
        if log:
            ax.set_yscale("log")
            tidy_log_axis(ax.yaxis, *ax.get_ylim())
        if log_x:
            ax.set_xscale("log")
            tidy_log_axis(ax.xaxis, *ax.get_xlim())
        ax.legend(fontsize=6)
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)


def _new_figure(n_envs: int, n_rows: int) -> tuple[Figure, np.ndarray]:
    width, height = figure_pixels(n_envs, n_rows)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    return fig, fig.subplots(n_rows, n_envs, squeeze=False)


def _metric(key: str) -> Series:
    return lambda run: run.series(key)


def _grad(estimator: str, statistic: str) -> Series:
    return lambda run: run.grad_series(estimator, statistic)


def returns_figure(groups: Groups, labels: list[str]) -> Figure:
    """Eval return (top) and smoothed training episodic return (bottom) against steps."""
    fig, axes = _new_figure(len(groups), 2)
    colors = _colors(labels)
    rows = [(EVAL_KEY, 1, "eval return"), (EPISODE_KEY, EPISODE_WINDOW, "episodic return")]
    for col, (env, by_label) in enumerate(groups.items()):
        for row, (key, window, name) in enumerate(rows):
            ax = axes[row, col]
            drew = [
                _plot_band(ax, runs, _metric(key), colors[label], label, window=window)
                for label, runs in by_label.items()
            ]
            _finish(ax, f"{env}: {name}", name, any(drew), log_x=wide_budgets(by_label))
    return fig


def _drawn_estimators(runs: list[Run]) -> list[str]:
    """The estimators whose statistics a label's curves show: every one its runs measured, or,
    for runs measured against the exact gradient (``sac_discrete`` measures four estimators
    whichever trains), only the one they train with."""
    trained = {trained_estimator(run) for run in runs}
    if len(trained) == 1 and None not in trained:
        return [e for e in trained if e is not None]
    return sorted(set().union(*(run.grad_estimators() for run in runs)))


def gradients_figure(groups: Groups, labels: list[str]) -> Figure:
    """Per-sample gradient variance and SNR of each measured estimator (solid: pathwise,
    dashed: score) and the score/pathwise variance ratio, all on log scales."""
    fig, axes = _new_figure(len(groups), 3)
    colors = _colors(labels)
    titles = {"variance": "gradient variance (trace)", "snr": "gradient SNR"}
    for col, (env, by_label) in enumerate(groups.items()):
        for row, statistic in enumerate(titles):
            ax = axes[row, col]
            drew = []
            for label, runs in by_label.items():
                for est in _drawn_estimators(runs):
                    style = LINESTYLES.get(est, ":")
                    series = _grad(est, statistic)
                    drew.append(
                        _plot_band(
                            ax,
                            runs,
                            series,
                            colors[label],
                            f"{label}: {est}",
                            log=True,
                            linestyle=style,
                        )
                    )
            _finish(
                ax,
                f"{env}: {titles[statistic]}",
                statistic,
                any(drew),
                True,
                wide_budgets(by_label),
            )
        ax = axes[2, col]
        drew = [
            _plot_band(ax, runs, _metric(RATIO_KEY), colors[label], label, log=True)
            for label, runs in by_label.items()
        ]
        title = f"{env}: variance ratio score / pathwise"
        _finish(ax, title, "ratio", any(drew), True, wide_budgets(by_label))
    return fig


def profiles_figure(envs: list[EnvResult], labels: list[str]) -> Figure:
    """Performance profiles of final eval return (top) and AUC (bottom): per estimator the
    fraction of its runs above each τ, with the 95 % bootstrap band (rliable)."""
    fig, axes = _new_figure(len(envs), 2)
    colors = _colors(labels)
    for col, result in enumerate(envs):
        for row, metric in enumerate((FINAL_METRIC, AUC_METRIC)):
            ax = axes[row, col]
            profiles = result.profiles.get(metric, {})
            for label, profile in profiles.items():
                ax.plot(
                    profile.taus,
                    profile.value,
                    color=colors[label],
                    label=label,
                    lw=1.5,
                    drawstyle="steps-post",
                    gid=label,
                )
                ax.fill_between(
                    profile.taus,
                    profile.low,
                    profile.high,
                    color=colors[label],
                    alpha=0.2,
                    linewidth=0,
                    step="post",
                )
            ax.set_title(f"{result.env}: performance profile, {metric}", fontsize=9)
            ax.set_xlabel(f"{metric} τ", fontsize=8)
            ax.set_ylabel("fraction of runs > τ", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_ylim(-0.02, 1.02)
            if profiles:
                ax.legend(fontsize=6)
            else:
                ax.text(0.5, 0.5, "no scores", ha="center", va="center", transform=ax.transAxes)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def plot_returns(groups: Groups, labels: list[str], path: Path) -> Path:
    return _save(returns_figure(groups, labels), path)


def plot_gradients(groups: Groups, labels: list[str], path: Path) -> Path:
    return _save(gradients_figure(groups, labels), path)


def plot_profiles(envs: list[EnvResult], labels: list[str], path: Path) -> Path:
    return _save(profiles_figure(envs, labels), path)


EXACT_PANELS = (
    ("bias", "relative bias ‖ḡ − g‖/‖g‖", True),
    ("variance", "gradient variance (trace)", True),
    ("cosine_exact", "cosine to the exact gradient", False),
)


def exact_figure(groups: Groups, envs: list[EnvResult], labels: list[str]) -> Figure:
    """Per env, one row per statistic of :data:`EXACT_PANELS`: a line (or a line per seed) per
    label measured against the exact gradient, of the estimator it trains with; the bias panel
    draws the noise floor of each label dotted."""
    fig, axes = _new_figure(len(envs), len(EXACT_PANELS))
    colors = _colors(labels)
    for col, result in enumerate(envs):
        by_label = groups[result.env]
        for row, (statistic, title, log) in enumerate(EXACT_PANELS):
            ax = axes[row, col]
            drew = []
            for comparison in result.exact:
                runs, color = by_label[comparison.label], colors[comparison.label]
                key = f"grad/{comparison.estimator}/{statistic}"
                drew.append(_plot_band(ax, runs, _metric(key), color, comparison.label, log=log))
                if statistic == "bias":
                    floor = _metric(f"grad/{comparison.estimator}/bias_noise_floor")
                    _plot_band(ax, runs, floor, color, "_nolegend_", log=True, linestyle=":")
            _finish(ax, f"{result.env}: {title}", statistic, any(drew), log, wide_budgets(by_label))
    return fig


def plot_exact(groups: Groups, envs: list[EnvResult], labels: list[str], path: Path) -> Path:
    return _save(exact_figure(groups, envs, labels), path)
