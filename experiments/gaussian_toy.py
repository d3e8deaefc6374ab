"""Gaussian toy study: variance of score-function and pathwise gradient estimates.

Reproduces the picture of Mohamed et al. 2020 ("Monte Carlo Gradient Estimation in Machine
Learning", JMLR, §3) for x ~ N(μ, σ²) and three functions:

* f(x) = (x − k)²   at μ = σ = 1, against k;  reference: the closed forms of docs/estimators.md §5
* f(x) = exp(−x²)   at μ = 1, against σ;      reference: quadrature
* f(x) = cos(ωx)    at μ = σ = 1, against ω;  reference: quadrature

For each, the single-sample variance of the ∂μ and ∂σ estimates of five estimators:
pathwise, score function (b = 0), score function with the leave-one-out mean baseline (its
reference is the score function with the constant b = E f, which the leave-one-out mean
matches up to O(1/n)), score function with the optimal constant baseline per parameter
b*_j = E[f s_j²]/E[s_j²] (estimated leave-one-out; reference: the constant b*_j), and the
inverse-variance mix of pathwise and the mean-baseline score function, with weights from an
independent pilot sample (reference: the variance at the optimal weight w*). Empirical points
come from ``rlgrad.estimators.per_sample_estimates``; error bars are ±2 standard errors of the
sample variance, √((m₄ − s⁴)/n). A fourth row shows the tail share of pathwise and score
(b = 0): the share of Σ‖g_i‖² carried by the 5 % least likely draws (lowest log q).

The quadrature writes x = μ + σε and integrates E[g(ε)²] − E[g(ε)]² with the trapezoid rule
on ε ∈ [−12, 12] (24 001 nodes, float64; exponentially accurate for these smooth integrands,
checked against the closed form of the quadratic), with f' from autograd:

    pathwise: ∂μ ≈ f'(x),            ∂σ ≈ f'(x) ε
    score:    ∂μ ≈ (f(x) − b) ε / σ,  ∂σ ≈ (f(x) − b)(ε² − 1) / σ

Usage: python experiments/gaussian_toy.py [--out PNG] [--samples N] [--seed S] [--threads T]
Writes the figure to --out and the table, as CSV, next to it.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.patches

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from rlgrad.estimators import (  # noqa: E402
    closed_form_gaussian_quadratic,
    optimal_baselines_gaussian_quadratic,
    per_sample_estimates,
    tail_share,
)

DTYPE = torch.float64
ESTIMATORS = ("pathwise", "score", "score+mean", "score+optimal", "mixed")
# (estimator, baseline) of rlgrad.estimators.per_sample_estimates for each line
SETTINGS = {
    "pathwise": ("pathwise", None),
    "score": ("score", None),
    "score+mean": ("score", "mean"),
    "score+optimal": ("score", "optimal"),
    "mixed": ("mixed", "mean"),
}
TAILS = ("pathwise", "score")
COLORS = {
    "pathwise": "tab:blue",
    "score": "tab:red",
    "score+mean": "tab:orange",
    "score+optimal": "tab:purple",
    "mixed": "tab:green",
}
MARKERS = {"pathwise": "o", "score": "s", "score+mean": "^", "score+optimal": "v", "mixed": "D"}
LABELS = {
    "pathwise": "pathwise",
    "score": "score function",
    "score+mean": "score function, mean baseline",
    "score+optimal": "score function, optimal baseline",
    "mixed": "mixed (pathwise + score/mean)",
}
Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Panel:
    """One column of the figure: a family of (f, μ, σ) indexed by a scalar parameter."""

    name: str
    title: str
    xlabel: str
    grid: np.ndarray  # where the estimators are sampled
    fine: np.ndarray  # where the reference curve is drawn
    setup: Callable[[float], tuple[Fn, float, float]]  # parameter -> (f, μ, σ)
    picks: tuple[float, float, float]  # the parameter values whose f the top row draws
    closed_form: bool = False  # the quadratic: use docs/estimators.md §5
    log_x: bool = False


def _quadratic(k: float) -> tuple[Fn, float, float]:
    return (lambda x: (x - k) ** 2), 1.0, 1.0


def _gauss_bump(sigma: float) -> tuple[Fn, float, float]:
    return (lambda x: torch.exp(-(x**2))), 1.0, sigma


def _cosine(omega: float) -> tuple[Fn, float, float]:
    return (lambda x: torch.cos(omega * x)), 1.0, 1.0


PANELS = (
    Panel(
        "quadratic",
        r"$f(x)=(x-k)^2$, $\mu=\sigma=1$",
        "k",
        np.linspace(-3.0, 3.0, 11),
        np.linspace(-3.0, 3.0, 121),
        _quadratic,
        picks=(-3.0, 0.0, 3.0),
        closed_form=True,
    ),
    Panel(
        "exp",
        r"$f(x)=\exp(-x^2)$, $\mu=1$",
        r"$\sigma$",
        np.geomspace(0.1, 3.0, 11),
        np.geomspace(0.1, 3.0, 121),
        _gauss_bump,
        picks=(0.1, 0.5, 3.0),
        log_x=True,
    ),
    Panel(
        "cos",
        r"$f(x)=\cos(\omega x)$, $\mu=\sigma=1$",
        r"$\omega$",
        np.geomspace(0.25, 16.0, 11),
        np.geomspace(0.25, 16.0, 121),
        _cosine,
        picks=(0.5, 2.0, 6.0),
        log_x=True,
    ),
)


# ----------------------------------------------------------------------------- references


_EPS = torch.linspace(-12.0, 12.0, 24_001, dtype=DTYPE)
_WEIGHTS = torch.exp(-0.5 * _EPS**2) / math.sqrt(2 * math.pi) * (_EPS[1] - _EPS[0])


def _expect(values: torch.Tensor) -> torch.Tensor:
    """E over ε ~ N(0, 1) of values sampled on the ε grid (trapezoid; the ends are ~e^-72)."""
    return (values * _WEIGHTS).sum(-1)


def quadrature_variances(f: Fn, mu: float, sigma: float) -> dict[str, tuple[float, float]]:
    """Single-sample (Var ∂μ, Var ∂σ) of each estimator, by quadrature over ε."""
    x = (mu + sigma * _EPS).requires_grad_()
    fx = f(x)
    (dfdx,) = torch.autograd.grad(fx.sum(), x)
    fx, eps = fx.detach(), _EPS
    b = _expect(fx)
    s_mu, s_sigma = eps / sigma, (eps**2 - 1) / sigma
    b_mu, b_sigma = (
        _expect(fx * s_mu**2) / _expect(s_mu**2),
        _expect(fx * s_sigma**2) / _expect(s_sigma**2),
    )
    per_estimator = {
        "pathwise": (dfdx, dfdx * eps),
        "score": (fx * s_mu, fx * s_sigma),
        "score+mean": ((fx - b) * s_mu, (fx - b) * s_sigma),
        "score+optimal": ((fx - b_mu) * s_mu, (fx - b_sigma) * s_sigma),
    }
    out = {name: tuple(float(_variance(g)) for g in gs) for name, gs in per_estimator.items()}
    out["mixed"] = tuple(
        float(_mixed_variance(a, c))
        for a, c in zip(per_estimator["pathwise"], per_estimator["score+mean"], strict=True)
    )
    return out


def _variance(g: torch.Tensor) -> torch.Tensor:
    return _expect(g**2) - _expect(g) ** 2


def _mixed_variance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Var(w a + (1 − w) b) at the variance-minimising w* ∈ [0, 1] (quadrature)."""
    var_a, var_b = _variance(a), _variance(b)
    cov = _expect(a * b) - _expect(a) * _expect(b)
    w = ((var_b - cov) / (var_a + var_b - 2 * cov)).clamp(0.0, 1.0)
    return w**2 * var_a + (1 - w) ** 2 * var_b + 2 * w * (1 - w) * cov


def closed_form_variances(k: float) -> dict[str, tuple[float, float]]:
    """docs/estimators.md §5 at μ = σ = 1; the baseline curve uses b = E f = (1 − k)² + 1."""
    cf = closed_form_gaussian_quadratic(1.0, 1.0, k)
    cfb = closed_form_gaussian_quadratic(1.0, 1.0, k, baseline=(1.0 - k) ** 2 + 1.0)
    b_mu, b_sigma = optimal_baselines_gaussian_quadratic(1.0, 1.0, k)
    cf_mu = closed_form_gaussian_quadratic(1.0, 1.0, k, baseline=b_mu)
    cf_sigma = closed_form_gaussian_quadratic(1.0, 1.0, k, baseline=b_sigma)
    return {
        "pathwise": (cf.var_pathwise_mu, cf.var_pathwise_sigma),
        "score": (cf.var_score_mu, cf.var_score_sigma),
        "score+mean": (cfb.var_score_mu, cfb.var_score_sigma),
        "score+optimal": (cf_mu.var_score_mu, cf_sigma.var_score_sigma),
        # No closed form for the mix's covariance term here: quadrature.
        "mixed": quadrature_variances(*_quadratic(k))["mixed"],
    }


def reference(panel: Panel, p: float) -> dict[str, tuple[float, float]]:
    if panel.closed_form:
        return closed_form_variances(p)
    return quadrature_variances(*panel.setup(p))


# ----------------------------------------------------------------------------- sampling


def empirical(
    f: Fn, mu: float, sigma: float, n: int, generator: torch.Generator
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, float]]:
    """Per estimator: sample (Var ∂μ, Var ∂σ) and the standard errors of those variances; and
    the tail shares of pathwise and score (b = 0)."""
    params = (torch.tensor(mu, dtype=DTYPE), torch.tensor(sigma, dtype=DTYPE))
    out, tails = {}, {}
    for name in ESTIMATORS:
        estimator, baseline = SETTINGS[name]
        est = per_sample_estimates(
            f, torch.distributions.Normal, params, n, estimator, baseline, generator
        )
        g = torch.stack(est.grads, dim=1)  # (n, 2)
        centred = g - g.mean(0)
        var = centred.pow(2).sum(0) / (n - 1)
        m4 = centred.pow(4).mean(0)
        out[name] = (var.numpy(), ((m4 - var**2).clamp(min=0) / n).sqrt().numpy())
        if name in TAILS:
            assert est.log_prob is not None
            tails[name] = float(tail_share(est.grads, est.log_prob))
    return out, tails


def run(n: int, seed: int) -> list[dict[str, float | str]]:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for panel in PANELS:
        for p in panel.grid:
            f, mu, sigma = panel.setup(float(p))
            emp, tails = empirical(f, mu, sigma, n, generator)
            ref = reference(panel, float(p))
            row: dict[str, float | str] = {"function": panel.name, "param": float(p)}
            for name, share in tails.items():
                row[f"{name}_tail_share"] = share
            for name in ESTIMATORS:
                for j, wrt in enumerate(("mu", "sigma")):
                    row[f"{name}_{wrt}_emp"] = float(emp[name][0][j])
                    row[f"{name}_{wrt}_se"] = float(emp[name][1][j])
                    row[f"{name}_{wrt}_ref"] = float(ref[name][j])
            rows.append(row)
    return rows


def quadrature_check() -> float:
    """Largest relative gap between quadrature and closed form on the quadratic."""
    gaps = []
    for k in np.linspace(-3.0, 3.0, 7):
        quad, exact = quadrature_variances(*_quadratic(k)), closed_form_variances(k)
        for name in ESTIMATORS[:-1]:  # the mix's reference is quadrature on both sides
            gaps += [abs(q / e - 1.0) for q, e in zip(quad[name], exact[name], strict=True)]
    return max(gaps)


# ----------------------------------------------------------------------------- output


def print_table(rows: list[dict[str, float | str]], n: int) -> None:
    """One table per parameter: empirical variance [reference], and who wins by how much."""
    for wrt, symbol in (("mu", "∂μ"), ("sigma", "∂σ")):
        print(f"\nVar of the single-sample {symbol} estimate: empirical (n = {n:,}) [reference]")
        head = f"{'f':<9} {'param':>6} | " + " | ".join(f"{e:^21}" for e in ESTIMATORS)
        print(head + " | SF/PW (ref)")
        print("-" * len(head) + "-+------------")
        for r in rows:
            cells = [
                f"{r[f'{e}_{wrt}_emp']:>9.4g} [{r[f'{e}_{wrt}_ref']:<9.4g}]" for e in ESTIMATORS
            ]
            ratio = r[f"score_{wrt}_ref"] / r[f"pathwise_{wrt}_ref"]
            line = f"{r['function']:<9} {r['param']:>6.3g} | " + " | ".join(cells)
            print(line + f" | {ratio:>10.3g}")
    print("\nTail share (5 % least likely draws) of Σ‖g‖², pathwise | score (b = 0):")
    for r in rows:
        print(
            f"{r['function']:<9} {r['param']:>6.3g} | {r['pathwise_tail_share']:.3f} | "
            f"{r['score_tail_share']:.3f}"
        )


def targets(rows: list[dict[str, float | str]]) -> dict[str, float]:
    """The worst ratios over the grid: mixed / min(pathwise, score+mean) (target ≤ 1.1, against
    the references) and optimal / mean baseline (target ≤ 1, up to sampling noise)."""
    mixed, optimal = [], []
    for r in rows:
        for wrt in ("mu", "sigma"):
            best = min(r[f"pathwise_{wrt}_ref"], r[f"score+mean_{wrt}_ref"])
            mixed.append(r[f"mixed_{wrt}_emp"] / best)
            optimal.append(r[f"score+optimal_{wrt}_ref"] / r[f"score+mean_{wrt}_ref"])
    return {"mixed_over_best": max(mixed), "optimal_over_mean": max(optimal)}


def write_csv(rows: list[dict[str, float | str]], path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict[str, float | str]], n: int, out: Path) -> None:
    fig, axes = plt.subplots(
        4, 3, figsize=(14, 13.5), gridspec_kw={"height_ratios": [0.7, 1, 1, 0.7]}
    )
    for col, panel in enumerate(PANELS):
        _plot_functions(axes[0, col], panel)
        refs = [reference(panel, float(p)) for p in panel.fine]
        mine = [r for r in rows if r["function"] == panel.name]
        for row, wrt in enumerate(("mu", "sigma"), start=1):
            ax, idx = axes[row, col], row - 1
            for name in ESTIMATORS:
                ax.plot(panel.fine, [r[name][idx] for r in refs], color=COLORS[name], lw=1.6)
                ax.errorbar(
                    [r["param"] for r in mine],
                    [r[f"{name}_{wrt}_emp"] for r in mine],
                    yerr=[2 * r[f"{name}_{wrt}_se"] for r in mine],
                    fmt=MARKERS[name],
                    ms=4.5,
                    mfc="none",
                    color=COLORS[name],
                    lw=1,
                    capsize=2,
                )
            _shade_score_wins(ax, panel.fine, [r["score"][idx] < r["pathwise"][idx] for r in refs])
            ax.set_yscale("log")
            ax.set_xscale("log" if panel.log_x else "linear")
            ax.grid(True, which="major", alpha=0.3)
            ax.set_ylabel(rf"Var of $\partial_\{wrt}$ estimate")
            ax.set_xlabel(panel.xlabel)
        ax = axes[3, col]
        for name in TAILS:
            ax.plot(
                [r["param"] for r in mine],
                [r[f"{name}_tail_share"] for r in mine],
                marker=MARKERS[name],
                mfc="none",
                color=COLORS[name],
                lw=1,
            )
        ax.axhline(0.05, color="grey", ls=":", lw=1)
        ax.set_ylim(0, 1)
        ax.set_xscale("log" if panel.log_x else "linear")
        ax.set_ylabel("tail share (5 % least likely)")
        ax.set_xlabel(panel.xlabel)
        ax.grid(True, alpha=0.3)
    handles = [
        plt.Line2D([], [], color=COLORS[e], marker=MARKERS[e], mfc="none", label=LABELS[e])
        for e in ESTIMATORS
    ]
    ref_kind = "closed form (quadratic) / quadrature; markers: samples ± 2 s.e."
    fig.legend(
        handles=handles
        + [
            plt.Line2D([], [], color="grey", label=f"lines: {ref_kind}"),
            matplotlib.patches.Patch(
                color="grey", alpha=0.15, label="score (b = 0) beats pathwise"
            ),
        ],
        loc="lower center",
        ncol=4,
        frameon=False,
        fontsize=9,
    )
    fig.suptitle(
        rf"Single-sample gradient variance for $x\sim\mathcal{{N}}(\mu,\sigma^2)$, "
        f"n = {n:,} samples per point",
        y=0.995,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 0.985))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _shade_score_wins(ax: plt.Axes, x: np.ndarray, wins: list[bool]) -> None:
    """Grey background where the score function's reference variance is below pathwise's."""
    start = None
    for i, win in enumerate([*wins, False]):
        if win and start is None:
            start = i
        elif not win and start is not None:
            ax.axvspan(x[start], x[i - 1], color="grey", alpha=0.15, lw=0)
            start = None


def _plot_functions(ax: plt.Axes, panel: Panel) -> None:
    """f for three values of the panel's parameter, over the density of x."""
    x = torch.linspace(-4.0, 6.0, 801, dtype=DTYPE)
    for p, ls in zip(panel.picks, ("-", "--", ":"), strict=True):
        f, mu, sigma = panel.setup(float(p))
        y = f(x)
        if panel.name == "quadratic":
            y = y / y.max()
        label = f"{panel.xlabel} = {p:g}"
        ax.plot(x, y, color="k", ls=ls, lw=1.2, label=label)
        if panel.name == "exp":
            dens = torch.exp(-0.5 * ((x - mu) / sigma) ** 2)
            ax.fill_between(x, 0, dens, color="tab:green", alpha=0.08)
    if panel.name != "exp":
        ax.fill_between(x, 0, torch.exp(-0.5 * (x - 1.0) ** 2), color="tab:green", alpha=0.15)
    ax.set_title(panel.title + ("  (f scaled to max 1)" if panel.name == "quadratic" else ""))
    ax.set_xlabel("x  (shaded: density of x, unnormalised)")
    ax.legend(fontsize=8, loc="upper center", ncol=3, frameon=False)
    ax.set_ylim(-1.1 if panel.name == "cos" else -0.05, 1.75 if panel.name == "cos" else 1.4)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("experiments/out/gaussian_toy.png"))
    parser.add_argument("--samples", type=int, default=200_000, help="samples per point")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: fastest on a shared CPU)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run(args.samples, args.seed)
    print_table(rows, args.samples)
    print(
        f"\nquadrature vs closed form on the quadratic: max relative gap {quadrature_check():.1e}"
    )
    worst = targets(rows)
    print(
        f"worst mixed / min(pathwise, score+mean) over the grid: {worst['mixed_over_best']:.3f} "
        f"(target ≤ 1.1); worst optimal / mean baseline: {worst['optimal_over_mean']:.3f}"
    )
    plot(rows, args.samples, args.out)
    csv_path = args.out.with_suffix(".csv")
    write_csv(rows, csv_path)
    print(f"wrote {args.out} and {csv_path}")


if __name__ == "__main__":
    main()
