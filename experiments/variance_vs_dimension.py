"""Score-function variance per action evaluated, against pathwise, as the action dimension grows.

One figure from two sources, on one axis:

* the bandit (``experiments/out/dimension_scaling.csv`` and ``dimension_scaling_learned.csv``,
  written by experiments/dimension_scaling.py): ``rlgrad/QuadraticBandit-v0`` with d-dimensional
  actions, a fixed actor, the true critic and a critic learned by SAC;
* a MuJoCo study folder (``rlgrad compare configs/compare/mujoco.yaml``): every finished SAC run,
  whatever its actor trains with, measures both estimators on the same states every
  ``diagnostics.interval`` updates (agents/sac.py ``diagnose``).

The quantity is the ratio of variances per critic evaluation,

    R(d) = (tr Σ_score · K) / (tr Σ_pathwise · 1),

tr Σ the per-state variance of one state's estimate (score: K actions with the leave-one-out
baseline, K critic evaluations; pathwise: one reparameterised draw, one evaluation of ∂Q/∂a).
R > 1 means that, for the same number of critic evaluations, the score function is the noisier
estimator. For a MuJoCo run R is the median over the run's measurements after ``learning_starts``
(each measurement a ratio on the same states, critic and policy; the CSV also gives the median
over the first and the last third of them); the figure draws every run as a point and the median
per environment as a line.

Per environment it also prints the median over runs of R and of its thirds, R/K (the same ratio
per *state*, one score estimate from K actions against one pathwise draw), and the median weight
the mixed estimator put on pathwise (every ``grad/mixed/weight_pathwise/<group>`` record after
``learning_starts`` of the runs that train with it, pooled).

Usage: python experiments/variance_vs_dimension.py STUDY_DIR [--docs]
Writes experiments/out/variance_vs_dimension.{csv,png} (and docs/variance_vs_dimension.png with
--docs); prints one row per run, then the per-environment summary.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from rlgrad.errors import UsageError
from rlgrad.report import Run, read_runs

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "experiments" / "out"
BANDIT_SOURCES = {
    "bandit, true Q": OUT / "dimension_scaling.csv",
    "bandit, learned Q": OUT / "dimension_scaling_learned.csv",
}
SCORE_K = 8  # the study's agent.score_samples and the bandit rows compared


def bandit_ratios(path: Path, k: int = SCORE_K) -> dict[int, float]:
    """d → variance per evaluation of score (K = k, loo) over that of pathwise, from one CSV."""
    with open(path, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    pathwise = {
        int(r["d"]): float(r["variance_per_evaluation"])
        for r in rows
        if r["estimator"] == "pathwise"
    }
    score = {
        int(r["d"]): float(r["variance_per_evaluation"])
        for r in rows
        if r["estimator"] == "score" and r["baseline"] == "loo" and int(r["K"]) == k
    }
    return {d: score[d] / pathwise[d] for d in sorted(score) if d in pathwise}


@dataclass(frozen=True)
class RunRatio:
    """A run's ratio per critic evaluation: the median over its measurements after learning
    starts, and over the first and the last third of them (how it moves while training)."""

    median: float
    first_third: float
    last_third: float
    measurements: int


def run_ratio(run: Run) -> RunRatio:
    """(tr Σ_score · K_score) / (tr Σ_pathwise · K_pathwise) of each of the run's measurements
    after learning starts, summarised by :class:`RunRatio`."""
    steps, score = run.series("grad/score/variance")
    pw_steps, pathwise = run.series("grad/pathwise/variance")
    _, k_score = run.series("grad/score/critic_evaluations")
    _, k_pathwise = run.series("grad/pathwise/critic_evaluations")
    if len(score) == 0 or len(score) != len(pathwise) or not np.array_equal(steps, pw_steps):
        raise UsageError(f"{run.path}: no paired grad/score and grad/pathwise variances")
    starts = float(run.config.get("agent", {}).get("learning_starts", 0))
    keep = steps > starts
    ratio = (score * k_score) / (pathwise * k_pathwise)
    ratio = ratio[keep & np.isfinite(ratio)]
    if len(ratio) == 0:
        raise UsageError(f"{run.path}: no finite measurement after learning starts")
    third = max(1, len(ratio) // 3)
    return RunRatio(
        float(np.median(ratio)),
        float(np.median(ratio[:third])),
        float(np.median(ratio[-third:])),
        len(ratio),
    )


def mixed_weights_on_pathwise(run: Run) -> np.ndarray:
    """Every ``grad/mixed/weight_pathwise/<group>`` record after learning starts (all parameter
    groups pooled); empty for a run that does not log them."""
    starts = float(run.config.get("agent", {}).get("learning_starts", 0))
    weights = []
    for key in sorted(k for k in run.keys if k.startswith("grad/mixed/weight_pathwise/")):
        steps, values = run.series(key)
        weights.append(values[(steps > starts) & np.isfinite(values)])
    return np.concatenate(weights) if weights else np.empty(0)


@dataclass(frozen=True)
class EnvSummary:
    """The study's figures for one environment: medians over its runs."""

    env: str
    d: int
    runs: int
    ratio: float
    first_third: float
    last_third: float
    ratio_per_state: float
    mixed_weight_on_pathwise: float | None


def env_summaries(rows: list[dict[str, object]], k: int = SCORE_K) -> list[EnvSummary]:
    """Per environment of the study rows, by action dimension: the median over runs of the
    run ratios R and of their thirds, R/k, and the pooled median of the mixed runs' weights."""
    by_env: dict[str, list[dict[str, object]]] = {}
    for r in rows:
        if r["source"] == "study":
            by_env.setdefault(str(r["env"]), []).append(r)
    summaries = []
    for env, runs in by_env.items():
        ratio = float(np.median([float(r["ratio_per_evaluation"]) for r in runs]))
        weights = [w for r in runs for w in r.get("mixed_weights", ())]
        summaries.append(
            EnvSummary(
                env=env,
                d=int(runs[0]["d"]),
                runs=len(runs),
                ratio=ratio,
                first_third=float(np.median([float(r["ratio_first_third"]) for r in runs])),
                last_third=float(np.median([float(r["ratio_last_third"]) for r in runs])),
                ratio_per_state=ratio / k,
                mixed_weight_on_pathwise=float(np.median(weights)) if weights else None,
            )
        )
    return sorted(summaries, key=lambda s: (s.d, s.env))


def action_dimension(env_id: str) -> int:
    env = gym.make(env_id)
    try:
        return int(np.prod(env.action_space.shape))
    finally:
        env.close()


def study_rows(study: Path) -> list[dict[str, object]]:
    """One row per finished SAC run of the study that measured both estimators."""
    runs, _ = read_runs(study)
    dims: dict[str, int] = {}
    rows: list[dict[str, object]] = []
    for run in sorted(runs, key=lambda r: (r.env, r.label, r.seed)):
        if "grad/score/variance" not in run.keys:
            continue
        if run.env not in dims:
            dims[run.env] = action_dimension(run.env)
        ratio = run_ratio(run)
        rows.append(
            {
                "source": "study",
                "env": run.env,
                "d": dims[run.env],
                "label": run.label,
                "trained_with": run.config["agent"].get("actor_estimator", ""),
                "seed": run.seed,
                "measurements": ratio.measurements,
                "ratio_per_evaluation": ratio.median,
                "ratio_first_third": ratio.first_third,
                "ratio_last_third": ratio.last_third,
                "mixed_weights": mixed_weights_on_pathwise(run).tolist(),
            }
        )
    if not rows:
        raise UsageError(f"no SAC run under {study} measured both estimators")
    return rows


def bandit_rows() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for source, path in BANDIT_SOURCES.items():
        if not path.is_file():
            continue
        for d, ratio in bandit_ratios(path).items():
            rows.append(
                {
                    "source": source,
                    "env": "rlgrad/QuadraticBandit-v0",
                    "d": d,
                    "label": f"score K={SCORE_K} loo / pathwise",
                    "trained_with": "",
                    "seed": "",
                    "measurements": "",
                    "ratio_per_evaluation": ratio,
                    "ratio_first_third": "",
                    "ratio_last_third": "",
                }
            )
    return rows


def plot(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, LogLocator, NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for source, style in (("bandit, true Q", "-o"), ("bandit, learned Q", "--s")):
        pts = sorted((r["d"], r["ratio_per_evaluation"]) for r in rows if r["source"] == source)
        if pts:
            d, ratio = zip(*pts, strict=True)
            ax.plot(d, ratio, style, color="0.35", ms=4, label=source)
    study = [r for r in rows if r["source"] == "study"]
    markers = {"pathwise": "o", "score": "^", "mixed": "s"}
    colors = {"pathwise": "tab:blue", "score": "tab:orange", "mixed": "tab:green"}
    shown: set[str] = set()
    for r in study:
        trained = str(r["trained_with"])
        jitter = {"pathwise": 0.94, "score": 1.0, "mixed": 1.06}.get(trained, 1.0)
        label = f"study run, actor trained with {trained}" if trained not in shown else None
        shown.add(trained)
        ax.plot(
            float(r["d"]) * jitter,
            r["ratio_per_evaluation"],
            markers.get(trained, "x"),
            color=colors.get(trained, "k"),
            alpha=0.7,
            ms=5,
            label=label,
        )
    summaries = env_summaries(rows)
    if summaries:
        ax.plot(
            [e.d for e in summaries],
            [e.ratio for e in summaries],
            "-",
            color="tab:red",
            lw=2,
            label="study, median of runs per env",
        )
        for e in summaries:
            ax.annotate(
                e.env.removesuffix("-v5"),
                (e.d, e.ratio),
                textcoords="offset points",
                xytext=(6, -12),
                fontsize=8,
            )
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator([1, 2, 4, 8, 16, 32, 64]))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_yscale("log")
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(LogLocator(base=10))
    ax.set_xlabel("action dimension d")
    ax.set_ylabel("variance per critic evaluation: score (K=8, loo) / pathwise")
    ax.set_title("Score-function variance against pathwise, per action evaluated", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3, which="major")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_csv(rows: list[dict[str, object]], path: Path) -> None:
    """The rows, without the mixed runs' raw weights (the summary gives their median)."""
    rows = [{k: v for k, v in r.items() if k != "mixed_weights"} for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a study folder of SAC runs (compare --out)")
    parser.add_argument("--out", type=Path, default=OUT, help="where the CSV and figure go")
    parser.add_argument(
        "--docs", action="store_true", help="also write docs/variance_vs_dimension.png"
    )
    args = parser.parse_args(argv)
    try:
        rows = bandit_rows() + study_rows(args.study)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_csv(rows, args.out / "variance_vs_dimension.csv")
    plot(rows, args.out / "variance_vs_dimension.png")
    if args.docs:
        plot(rows, ROOT / "docs" / "variance_vs_dimension.png")
    print(
        f"{'source':<18} {'env':<26} {'d':>3} {'trained with':<12} {'seed':>4} "
        f"{'R median':>9} {'1st third':>9} {'last third':>10}"
    )
    for r in rows:
        thirds = [r["ratio_first_third"], r["ratio_last_third"]]
        first, last = (f"{v:.3g}" if isinstance(v, float) else "" for v in thirds)
        print(
            f"{r['source']:<18} {r['env']:<26} {r['d']:>3} {r['trained_with']:<12} "
            f"{r['seed']!s:>4} {float(r['ratio_per_evaluation']):>9.3g} {first:>9} {last:>10}"
        )
    print(
        f"\n{'env (median over runs)':<26} {'d':>3} {'runs':>4} {'R':>6} {'1st third':>9} "
        f"{'last third':>10} {'R/K':>6} {'mixed weight on pathwise':>25}"
    )
    for e in env_summaries(rows):
        w = e.mixed_weight_on_pathwise
        shown = f"{w:.2f}" if w is not None else "–"
        print(
            f"{e.env:<26} {e.d:>3} {e.runs:>4} {e.ratio:>6.2g} {e.first_third:>9.2g} "
            f"{e.last_third:>10.3g} {e.ratio_per_state:>6.2g} {shown:>25}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
