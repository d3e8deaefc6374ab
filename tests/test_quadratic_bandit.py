"""rlgrad/QuadraticBandit-v0 and the true actor gradient of experiments/dimension_scaling.py."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlgrad.envs  # noqa: F401  (registers the toy envs)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import dimension_scaling as ds  # noqa: E402


def test_bandit_episodes_are_one_step_and_q_is_the_reward():
    env = gym.make("rlgrad/QuadraticBandit-v0", action_dim=3, obs_dim=2, seed=5)
    bandit = env.unwrapped
    assert env.action_space.shape == (3,) and env.observation_space.shape == (2,)
    problem = ds.make_problem(3, obs_dim=2, env_seed=5)
    rng = np.random.default_rng(0)
    for episode in range(20):
        obs, _ = env.reset(seed=episode)
        assert np.all(np.abs(obs) <= 1.0)
        optimum = bandit.optimum(obs)
        assert np.all(np.abs(optimum) < 1.0)
        action = rng.uniform(-1, 1, 3).astype(np.float32)
        _, reward, terminated, truncated, _ = env.step(action)
        assert terminated and not truncated  # one step, then the episode ends: Q(s, a) = r(s, a)
        expected = -float(np.sum((action.astype(np.float64) - np.tanh(bandit.weight @ obs)) ** 2))
        assert reward == pytest.approx(expected, rel=1e-9, abs=1e-12)
        # the experiment's torch Q is the env's reward
        q = problem.q(torch.as_tensor(obs)[None], torch.as_tensor(action)[None])
        assert float(q[0]) == pytest.approx(reward, rel=1e-5, abs=1e-6)
    # at the optimum the reward is 0, and W is fixed by the seed kwarg alone
    env.reset(seed=0)
    assert env.step(bandit.optimum(bandit.state))[1] == pytest.approx(0.0, abs=1e-6)
    again = gym.make("rlgrad/QuadraticBandit-v0", action_dim=3, obs_dim=2, seed=5).unwrapped
    other = gym.make("rlgrad/QuadraticBandit-v0", action_dim=3, obs_dim=2, seed=6).unwrapped
    assert np.array_equal(again.weight, bandit.weight)
    assert not np.allclose(other.weight, bandit.weight)


def quadrature_gradient(problem: ds.Problem, nodes_s: int = 4000, nodes_eps: int = 801):
    """∇θ E_s E_ε[‖tanh(μ(s) + σ(s) ε) − a*(s)‖²] for d = m = 1 in float64: the midpoint rule
    over s ~ U[−1, 1] (the actor is piecewise smooth in s) and the trapezoid rule over
    ε ∈ [−10, 10] against the standard normal density (exponentially accurate for the smooth
    integrand in ε)."""
    actor = copy.deepcopy(problem.actor).double()
    s = (torch.arange(nodes_s, dtype=torch.float64) + 0.5) / nodes_s * 2.0 - 1.0
    eps = torch.linspace(-10.0, 10.0, nodes_eps, dtype=torch.float64)
    w_eps = torch.exp(-0.5 * eps * eps) / math.sqrt(2 * math.pi) * (eps[1] - eps[0])
    w_eps[0] = w_eps[-1] = w_eps[0] / 2
    dist = actor(s[:, None])
    u = dist.mean + dist.std * eps[:, None, None]  # (E, S, 1)
    target = torch.tanh(s[:, None] @ problem.weight.double().T)  # (S, 1)
    h = ((torch.tanh(u) - target) ** 2).sum(-1)  # (E, S)
    objective = (w_eps[:, None] * h).sum(0).mean()
    grads = torch.autograd.grad(objective, list(actor.parameters()))
    return torch.cat([g.flatten() for g in grads])


def test_true_gradient_matches_quadrature_within_its_standard_error():
    problem = ds.make_problem(1, obs_dim=1, env_seed=3, actor_seed=3, hidden=(16, 16))
    g_mc, se = ds.true_gradient(problem, samples=1_000_000, seed=11)
    g_quad = quadrature_gradient(problem)
    # the test has power: the gradient stands far out of the Monte Carlo error
    assert g_quad.norm() > 30 * se.norm()
    live = se > 0
    z = (g_mc[live] - g_quad[live]) / se[live]
    assert float((z * z).mean()) < 1.6, float((z * z).mean())
    assert float(z.abs().max()) < 5.5, float(z.abs().max())
    assert torch.allclose(g_mc[~live], g_quad[~live], atol=1e-9)
    # a wrong truth (e.g. the gradient at a 10 % different objective scale) is caught
    z_wrong = (1.1 * g_mc[live] - g_quad[live]) / se[live]
    assert float((z_wrong * z_wrong).mean()) > 1.6


def test_dimension_scaling_smoke_finite_and_pathwise_aligned_at_d1():
    """Smoke test: finite numbers for every line; and pathwise's batch-256 estimate points
    along the true gradient at d = 1."""
    rows = ds.run_dimension(
        1, ks=(1, 4), truth_samples=1 << 16, states=512, pilot_states=256, hidden=(32, 32)
    )
    lines = {(r["estimator"], r["K"], r["baseline"]) for r in rows}
    assert lines == {
        ("pathwise", 1, ""),
        ("score", 1, "none"),
        ("mixed", 1, "none"),
        ("score", 4, "loo"),
        ("score", 4, "optimal"),
        ("mixed", 4, "loo"),
    }
    for r in rows:
        for key in ("variance", "variance_per_evaluation", "cosine_batch256_mean"):
            assert math.isfinite(r[key]) and (key == "cosine_batch256_mean" or r[key] > 0)
        assert r["variance_per_evaluation"] == pytest.approx(
            r["variance"] * r["critic_evaluations"]
        )
    pathwise = next(r for r in rows if r["estimator"] == "pathwise")
    assert pathwise["cosine_batch256_mean"] > 0.9


# ---- the learned-critic mode: bias of each estimator under a critic other than the true Q ----


def _bias_estimators(k: int = 4) -> dict:
    return {
        "pathwise": ds.Pathwise(),
        "score/none": ds.ScoreFunction(1, "none"),
        "score/loo": ds.ScoreFunction(k, "loo"),
    }


def _z2(b: torch.Tensor, expected: torch.Tensor, se: torch.Tensor) -> float:
    """Mean over the coordinates (with se > 0) of ((b − expected)/se)²: about 1 when b is
    ``expected`` up to its standard error."""
    live = se > 0
    return float((((b - expected)[live] / se[live]) ** 2).mean())


def test_critic_bias_vanishes_when_the_critic_is_the_true_q_up_to_a_constant():
    """A critic Q + c has value errors everywhere but moves no estimator's expectation: the
    measured bias is exactly 0 for pathwise (same slopes) and for score/loo (the constant
    cancels), and within its standard error for score/none (c ∇log π: zero mean, not zero)."""
    problem = ds.make_problem(4, hidden=(32, 32))
    g_true, _ = ds.true_gradient(problem, samples=1 << 16, seed=1)
    critic = lambda obs, actions: problem.q(obs, actions) + 2.5  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    chunks = ds.critic_bias(problem, critic, _bias_estimators(), 0.0, 1 << 14, gen, chunk=512)
    stats = {name: ds.bias_statistics(c, g_true, chunks["pathwise"]) for name, c in chunks.items()}
    assert stats["pathwise"]["bias_relative_error"] < 1e-6
    assert stats["score/loo"]["bias_relative_error"] < 1e-4
    none = chunks["score/none"]
    b, se = none.mean(0), none.std(0) / math.sqrt(len(none))
    assert stats["score/none"]["bias_relative_se"] > 0.01  # a noisy estimate of zero ...
    assert _z2(b, torch.zeros_like(b), se) < 2.0  # ... consistent with zero
    assert _z2(b, 0.3 * g_true, se) > 2.0  # and the check has power against a 30 % bias


def test_offset_critic_biases_every_estimator_alike():
    """A critic Q + c‖a‖² biases the gradient by ∇θ E[−c‖a‖²] (computed here independently, as
    a pathwise average through the error alone): pathwise's measured bias is far out of its
    noise and matches it, and the score function's, from Q̂'s values alone, is the same vector:
    every estimator here is unbiased for the gradient of the critic's own objective."""
    c = 0.5
    problem = ds.make_problem(4, hidden=(32, 32))
    g_true, _ = ds.true_gradient(problem, samples=1 << 16, seed=1)
    error = lambda obs, actions: c * (actions * actions).sum(-1)  # noqa: E731
    expected, expected_se = ds.true_gradient(problem.with_critic(error), 1 << 18, seed=5)
    critic = lambda obs, actions: problem.q(obs, actions) + error(obs, actions)  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    chunks = ds.critic_bias(problem, critic, _bias_estimators(), 0.0, 1 << 14, gen, chunk=512)
    stats = {name: ds.bias_statistics(c, g_true, chunks["pathwise"]) for name, c in chunks.items()}
    pathwise = stats["pathwise"]
    assert pathwise["bias_relative_error"] > 0.1
    assert pathwise["bias_relative_error"] > 30 * pathwise["bias_relative_se"]
    assert pathwise["bias_cosine"] < 1 - 10 * pathwise["bias_cosine_se"]
    for name in ("pathwise", "score/loo", "score/none"):
        b = chunks[name].mean(0)
        se = (chunks[name].var(0) / len(chunks[name]) + expected_se**2).sqrt()
        assert _z2(b, expected, se) < 2.0, name
        assert stats[name]["bias_relative_error"] == pytest.approx(
            float(expected.norm() / g_true.norm()), abs=3 * stats[name]["bias_relative_se"] + 0.01
        )
    # the check has power: half the offset is caught
    loo_chunks = chunks["score/loo"]
    se = (loo_chunks.var(0) / len(loo_chunks) + expected_se**2).sqrt()
    assert _z2(loo_chunks.mean(0), 0.5 * expected, se) > 2.0
    loo = stats["score/loo"]
    assert loo["bias_vs_pathwise"] < 3 * loo["bias_vs_pathwise_se"]


def test_learned_critic_run_reuses_the_true_runs_states_and_trains_sac():
    """With the true Q wrapped as the critic, the learned-critic rows repeat the true-Q run's
    variances and cosines (same actor, states and draws) with zero bias; and a (very short) SAC
    run yields a critic min_i Q_i that the same code measures, every number finite."""
    kw = dict(ks=(1, 4), truth_samples=1 << 15, states=512, pilot_states=256, hidden=(32, 32))
    true_rows = ds.run_dimension(2, **kw)
    q = ds.make_problem(2, hidden=(32, 32)).q
    wrapped = ds.run_dimension(2, **kw, critic=q, bias_states=2048, bias_chunk=512)
    for t, w in zip(true_rows, wrapped, strict=True):
        assert (t["estimator"], t["K"], t["baseline"]) == (w["estimator"], w["K"], w["baseline"])
        assert w["variance"] == pytest.approx(t["variance"], rel=1e-5)
        assert w["cosine_batch256_mean"] == pytest.approx(t["cosine_batch256_mean"], abs=1e-6)
        assert w["bias_relative_error"] < 1e-5 and w["bias_cosine"] == pytest.approx(1.0)
        assert w["critic_slope_rel_rmse"] == 0.0

    run = ds.train_critic(2, steps=400, hidden=(32, 32), learning_starts=200)
    assert run.steps == 400 and run.updates == 200 and math.isfinite(run.eval_return)
    obs, actions = torch.rand(5, 4) * 2 - 1, torch.rand(3, 5, 2) * 2 - 1
    values = run.critic(obs, actions)
    assert values.shape == (3, 5)
    twin = run.critic.module(obs, actions[1])
    assert torch.allclose(values[1], twin.min(0).values)
    rows = ds.run_dimension(2, **kw, critic=run.critic, bias_states=2048, bias_chunk=512)
    assert set(ds.LEARNED_COLUMNS) - {"sac_steps", "sac_updates", "sac_eval_return"} - {
        "sac_seconds"
    } <= set(rows[0])
    for r in rows:
        for key in ("variance", "bias_relative_error", "bias_relative_se", "bias_cosine"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["critic_slope_rel_rmse"] > 0
