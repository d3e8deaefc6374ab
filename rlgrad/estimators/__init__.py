"""rlgrad's estimator core: gradients of expectations over a distribution's samples.

* :mod:`rlgrad.estimators.policy`: the policy-gradient estimators as objects
  (:class:`Pathwise`, :class:`ScoreFunction`), each giving the loss that training takes and
  the per-state row losses that the diagnostics measure; SAC, the diagnostics and the SB3
  callback all use them.
* :mod:`rlgrad.estimators.monte_carlo`: the same two estimators for any differentiable or
  black-box f and any distribution, one estimate per sample
  (:func:`per_sample_gradients`), their statistics (:func:`summarize`) and the closed forms
  the tests check them against (:func:`closed_form_gaussian_quadratic`).
* :mod:`rlgrad.estimators.categorical`: discrete actions, π = softmax(l): the exact sum
  (:class:`CategoricalExact`), the score function, Gumbel-softmax and straight-through, with
  the same protocol, and their bias and variance against the exact gradient
  (:func:`categorical_statistics`).

docs/estimators.md states the mathematics.
"""

from rlgrad.estimators.categorical import (
    CategoricalEstimator,
    CategoricalExact,
    CategoricalObjective,
    CategoricalPolicy,
    CategoricalScore,
    CategoricalStatistics,
    GumbelSoftmax,
    StraightThrough,
    categorical_statistics,
    closed_form_categorical,
    make_categorical_estimator,
)
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
    "CategoricalEstimator",
    "CategoricalExact",
    "CategoricalObjective",
    "CategoricalPolicy",
    "CategoricalScore",
    "CategoricalStatistics",
    "Estimator",
    "GaussianQuadraticMoments",
    "GradientSummary",
    "GumbelSoftmax",
    "Mixed",
    "Pathwise",
    "PerSampleEstimates",
    "PolicyGradientEstimator",
    "ScoreFunction",
    "SquashedGaussianPolicy",
    "StraightThrough",
    "categorical_statistics",
    "closed_form_categorical",
    "closed_form_gaussian_quadratic",
    "flatten_per_sample",
    "make_categorical_estimator",
    "make_estimator",
    "mixing_weights",
    "optimal_baseline",
    "optimal_baselines_gaussian_quadratic",
    "per_sample_estimates",
    "per_sample_gradients",
    "summarize",
    "tail_share",
]
