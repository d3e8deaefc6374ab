"""Gradient diagnostics: per-sample gradients against backward loops, statistics against
their definitions, and SAC's two actor estimators agreeing on the same gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlgrad.agents.sac import Agent, Config
from rlgrad.config import DiagnosticsConfig
from rlgrad.diagnostics import flatten, gradient_statistics
from rlgrad.envs import EnvSpec
from rlgrad.estimators import summarize
from rlgrad.learner import Learner


def _agent(**overrides) -> Agent:
    torch.manual_seed(0)
    cfg = Config(hidden_sizes=[16, 16], score_samples=4, batch_size=32, **overrides)
    agent = Agent(cfg, EnvSpec(obs_dim=3, act_dim=2), Learner(), n_envs=1)
    for _ in range(64):
        agent.observe(
            torch.randn(1, 3),
            torch.rand(1, 2) * 2 - 1,
            torch.randn(1),
            torch.randn(1, 3),
            torch.zeros(1, dtype=torch.bool),
            torch.zeros(1, dtype=torch.bool),
        )
    return agent


def _loop_grads(agent: Agent, losses: list[torch.Tensor]) -> torch.Tensor:
    params = list(agent.actor.parameters())
    rows = [torch.cat([g.flatten() for g in torch.autograd.grad(l, params)]) for l in losses]
    return torch.stack(rows)


def test_pathwise_per_sample_grads_equal_backward_loop():
    agent, alpha = _agent(), torch.tensor(0.3)
    obs = torch.randn(6, 3)
    torch.manual_seed(5)
    got = flatten(agent.pathwise_per_sample(obs, alpha))
    torch.manual_seed(5)
    eps = torch.randn(6, 2)
    losses = []
    for i in range(6):
        policy = agent.actor(obs[i : i + 1])
        u = policy.mean + policy.std * eps[i : i + 1]
        q = agent.critic(obs[i : i + 1], torch.tanh(u)).min(0).values
        losses.append((alpha * policy.log_prob_pre_tanh(u) - q).sum())
    want = _loop_grads(agent, losses)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_score_per_sample_grads_equal_backward_loop():
    agent, alpha = _agent(), torch.tensor(0.3)
    obs = torch.randn(5, 3)
    torch.manual_seed(7)
    got = flatten(agent.score_per_sample(obs, alpha))
    torch.manual_seed(7)
    with torch.no_grad():
        policy = agent.actor(obs)
        u = policy.rsample_pre_tanh((4,))
        advantage = agent._score_advantage(obs, policy, u, alpha)
    losses = []
    for i in range(5):
        log_prob = agent.actor(obs[i : i + 1]).log_prob_pre_tanh(u[:, i : i + 1])  # (K, 1)
        losses.append(((advantage[:, i : i + 1] + alpha) * log_prob).mean())
    want = _loop_grads(agent, losses)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_statistics_match_their_definitions():
    torch.manual_seed(0)
    g = torch.randn(64, 10) + torch.linspace(-1, 1, 10)
    stats = gradient_statistics(g, reference=torch.ones(10))
    summary = summarize(g)
    assert stats["variance"].item() == pytest.approx(summary.trace_var.item(), rel=1e-5)
    assert stats["snr"].item() == pytest.approx(summary.snr.item(), rel=1e-5)
    mean = g.double().mean(0)
    g_small, g_big = g.double().pow(2).sum(1).mean(), mean.pow(2).sum()
    true_sq = (64 * g_big - g_small) / 63
    trace = (g_small - g_big) / (1 - 1 / 64)
    assert stats["noise_scale"].item() == pytest.approx((trace / true_sq).item(), rel=1e-5)
    cos = (mean @ torch.ones(10, dtype=torch.float64)) / (mean.norm() * 10**0.5)
    assert stats["cosine_reference"].item() == pytest.approx(cos.item(), rel=1e-6)


def test_noise_scale_is_infinite_when_mean_is_lost_in_noise():
    torch.manual_seed(0)
    stats = gradient_statistics(torch.randn(8, 1000))
    assert torch.isinf(stats["noise_scale"])


def test_score_and_pathwise_are_unbiased_for_the_same_gradient():
    """Means of many estimates at fixed critic and policy: cosine → 1, error ∝ 1/√n."""
    agent, alpha = _agent(), torch.tensor(0.2)
    states = torch.randn(2, 3)

    def mean_grad(estimator: str, n: int) -> torch.Tensor:
        obs = states.repeat(n // 2, 1)
        per_sample = getattr(agent, f"{estimator}_per_sample")(obs, alpha)
        return flatten(per_sample).double().mean(0)

    torch.manual_seed(1)
    truth = mean_grad("pathwise", 400_000)
    errors = {}
    for n in (2_000, 32_000):
        score = mean_grad("score", n)
        errors[n] = ((score - truth).norm() / truth.norm()).item()
    cos = torch.nn.functional.cosine_similarity(mean_grad("score", 32_000), truth, dim=0)
    assert cos > 0.97
    assert errors[32_000] < errors[2_000] / 2.0  # 16x the samples: ~4x smaller error


def test_diagnose_reports_both_estimators_and_their_ratio():
    agent = _agent()
    metrics = agent.diagnose(DiagnosticsConfig(interval=1, batch=16, reference_batch=64))
    for estimator in ("pathwise", "score"):
        for stat in ("grad_norm", "variance", "batch_variance", "snr", "noise_scale"):
            assert torch.isfinite(metrics[f"grad/{estimator}/{stat}"]) or stat == "noise_scale"
        assert -1.0 <= metrics[f"grad/{estimator}/cosine_reference"] <= 1.0
    ratio = metrics["grad/score/variance"] / metrics["grad/pathwise/variance"]
    assert metrics["grad/variance_ratio_score_over_pathwise"] == pytest.approx(ratio.item())
