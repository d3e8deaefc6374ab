"""rlgrad's estimator core: gradients of expectations over a distribution's samples.

* :mod:`rlgrad.estimators.policy`: the policy-gradient estimators as objects
  (:class:`Pathwise`, :class:`ScoreFunction`), each giving the loss that training takes and
  the per-state row losses that the diagnostics measure; SAC, the diagnostics and the SB3
  callback all use them.
* :mod:`rlgrad.estimators.monte_carlo`: the same two estimators for any differentiable or
  black-box f and any distribution, one estimate per sample
  (:func:`per_sample_gradients`), their statistics (:func:`summarize`) and the closed forms
  the tests check them against (:func:`closed_form_gaussian_quadratic`).

docs/estimators.md states the mathematics.
"""

from rlgrad.estimators.monte_carlo import (
    Baseline,
    Estimator,
    GaussianQuadraticMoments,
    GradientSummary,
    PerSampleEstimates,
    closed_form_gaussian_quadratic,
    flatten_per_sample,
    mixing_weights,
    optimal_baseline,
    optimal_baselines_gaussian_quadratic,
    per_sample_estimates,
    per_sample_gradients,
    summarize,
    tail_share,
)
from rlgrad.estimators.policy import (
    ActionObjective,
    Mixed,
    Pathwise,
    PolicyGradientEstimator,
    ScoreFunction,
    SquashedGaussianPolicy,
    make_estimator,
)

__all__ = [
    "ActionObjective",
    "Baseline",
    "Estimator",
    "GaussianQuadraticMoments",
    "GradientSummary",
    "Mixed",
    "Pathwise",
    "PerSampleEstimates",
    "PolicyGradientEstimator",
    "ScoreFunction",
    "SquashedGaussianPolicy",
    "closed_form_gaussian_quadratic",
    "flatten_per_sample",
    "make_estimator",
    "mixing_weights",
    "optimal_baseline",
    "optimal_baselines_gaussian_quadratic",
    "per_sample_estimates",
    "per_sample_gradients",
    "summarize",
    "tail_share",
]
