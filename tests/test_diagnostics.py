"""Gradient diagnostics: per-sample gradients against backward loops, statistics against
their definitions, and SAC's two actor estimators agreeing on the same gradient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rlgrad import diagnostics
from rlgrad.agents.sac import Agent, Config
from rlgrad.config import DiagnosticsConfig
from rlgrad.diagnostics import flatten, gradient_statistics
from rlgrad.envs import EnvSpec
from rlgrad.estimators import ScoreFunction, summarize
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
        k = u.shape[0]
        q = torch.stack([agent.critic(obs, torch.tanh(u[j])).min(0).values for j in range(k)])
        h = alpha * policy.log_prob_pre_tanh(u) - q
        advantage = h - (h.sum(0, keepdim=True) - h) / (k - 1)  # leave-one-out baseline
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


def _fit_value(agent: Agent, alpha: torch.Tensor, steps: int = 300) -> None:
    """Fit V_ψ (score_baseline=value) on states like the test's, critic and policy fixed."""
    gen = torch.Generator().manual_seed(11)
    for _ in range(steps):
        obs = torch.randn(64, 3, generator=gen)
        agent.fit_score_value(obs, agent.policy(obs), alpha)


@pytest.mark.parametrize("baseline", ["loo", "none", "value", "optimal"])
def test_score_and_pathwise_are_unbiased_for_the_same_gradient(baseline):
    """Means of many estimates at fixed critic and policy: cosine → 1, error ∝ 1/√n."""
    agent, alpha = _agent(score_baseline=baseline), torch.tensor(0.2)
    if baseline == "value":
        _fit_value(agent, alpha)
    states = torch.randn(2, 3)

    def mean_grad(estimator: str, n: int) -> torch.Tensor:
        sums = [
            agent.gradient_moments(states.repeat(25_000, 1), alpha)[estimator].mean().double()
            for _ in range(n // 50_000)
        ]
        if not sums:
            return agent.gradient_moments(states.repeat(n // 2, 1), alpha)[estimator].mean()
        return torch.stack(sums).mean(0)

    torch.manual_seed(1)
    truth = mean_grad("pathwise", 400_000)
    errors = {}
    for n in (2_000, 32_000):
        score = mean_grad("score", n).double()
        errors[n] = ((score - truth).norm() / truth.norm()).item()
    cos = torch.nn.functional.cosine_similarity(mean_grad("score", 32_000).double(), truth, dim=0)
    assert cos > 0.97
    assert errors[32_000] < errors[2_000] / 2.0  # 16x the samples: ~4x smaller error


def test_value_baseline_lowers_score_variance():
    """A trained critic's Q is far from 0 (here +20 on a random critic): without a baseline
    that offset multiplies every ∇ log π; b(s) = −V_ψ(s) fitted to the soft value removes it."""
    agent, alpha = _agent(score_baseline="value", learning_rate=1e-2), torch.tensor(0.2)
    with torch.no_grad():
        agent.critic.ensemble.biases[-1].add_(20.0)
    _fit_value(agent, alpha)
    obs = torch.randn(512, 3)

    def score_variance(baseline: str) -> float:
        k = agent.cfg.score_samples
        agent.estimators["score"] = ScoreFunction(k, baseline, agent.state_value)
        torch.manual_seed(2)  # the same draws for every baseline
        moments = agent.gradient_moments(obs, alpha)["score"]
        return diagnostics.moment_statistics(moments)["variance"].item()

    value, none = score_variance("value"), score_variance("none")
    assert value < none / 10


@pytest.mark.parametrize("baseline", ["loo", "none", "value", "optimal"])
def test_fast_moments_equal_per_sample_definition(baseline):
    """gradient_moments (LinearTape, no per-sample rows) against the vmap rows, same draws."""
    agent, alpha = _agent(score_baseline=baseline), torch.tensor(0.3)
    obs = torch.randn(40, 3)
    torch.manual_seed(3)
    fast = agent.gradient_moments(obs, alpha)
    torch.manual_seed(3)
    rows = {"pathwise": agent.pathwise_per_sample(obs, alpha)}
    rows["score"] = agent.score_per_sample(obs, alpha)
    for name, grads in rows.items():
        want = diagnostics.GradientMoments.from_per_sample(grads)
        got = fast[name]
        assert list(got.sums) == [n for n, _ in agent.actor.named_parameters()]
        for key in want.sums:
            torch.testing.assert_close(got.sums[key], want.sums[key], rtol=1e-5, atol=1e-7)
            assert got.sq_sums[key].item() == pytest.approx(want.sq_sums[key].item(), rel=1e-5)
        got_stats = diagnostics.moment_statistics(got)
        for key, value in diagnostics.moment_statistics(want).items():
            assert got_stats[key].item() == pytest.approx(value.item(), rel=1e-5)
        got_layers = diagnostics.layer_statistics(got)
        for key, value in diagnostics.per_layer_statistics(grads).items():
            assert got_layers[key].item() == pytest.approx(value.item(), rel=1e-4)


def test_linear_tape_equals_vmap_on_any_mlp():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 7), torch.nn.Tanh(), torch.nn.Linear(7, 5), torch.nn.ReLU()
    )
    net.append(torch.nn.Linear(5, 3, bias=False))
    x, y = torch.randn(30, 4), torch.randn(30, 3)

    def row_losses(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (torch.sin(out) * target).sum(-1) + out.pow(2).sum(-1)

    with diagnostics.LinearTape(net) as tape:
        out = net(x)
    got = tape.moments(row_losses(out, y))
    grads = diagnostics.per_sample_grads(net, lambda f, xi, yi: row_losses(f(xi), yi).sum(), x, y)
    want = diagnostics.GradientMoments.from_per_sample(grads)
    for key in want.sums:
        torch.testing.assert_close(got.sums[key], want.sums[key], rtol=1e-5, atol=1e-7)
        assert got.sq_sums[key].item() == pytest.approx(want.sq_sums[key].item(), rel=1e-5)


class _TwoHeads(torch.nn.Module):
    """A trunk and two linear heads (widths 1 and 3: the one-wide and the batched backward)."""

    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Sequential(
            torch.nn.Linear(4, 7), torch.nn.Tanh(), torch.nn.Linear(7, 5), torch.nn.ReLU()
        )
        self.a, self.b = torch.nn.Linear(5, 1), torch.nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.a(h), self.b(h)


def _draw_losses(a: torch.Tensor, b: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """K losses per row (K, B), each a nonlinear function of the heads and its own noise."""
    return (torch.sin(a * noise[..., :1]) + (b.exp() * noise[..., 1:]).sum(-1, keepdim=True))[
        ..., 0
    ]


def test_head_jacobians_give_the_gradients_of_backward_passes_through_the_module():
    """δ and ‖g‖² of K losses per row through the heads' Jacobians against a batched backward
    through the module, and ‖g‖² against one backward call per loss (the definition)."""
    torch.manual_seed(0)
    net, x, noise = _TwoHeads(), torch.randn(6, 4), torch.randn(5, 6, 4)
    with diagnostics.LinearTape(net) as tape:
        a, b = net(x)
    losses = _draw_losses(a, b, noise)  # (K, B)
    direct = tape.deltas(losses, retain_graph=True)
    direct_mean = tape.deltas(losses.mean(0), retain_graph=True)
    params = list(net.parameters())
    loop = torch.stack(
        [
            sum(
                g.double().pow(2).sum()
                for g in torch.autograd.grad(loss, params, retain_graph=True)
            )
            for loss in losses.reshape(-1)
        ]
    ).view(losses.shape)

    heads = tape.heads(["a", "b"])
    leaves = [z.detach().expand(5, *z.shape).clone().requires_grad_() for z in heads.outputs]
    c = torch.cat(torch.autograd.grad(_draw_losses(*leaves, noise).sum(), leaves), dim=-1)
    c = c.transpose(0, 1)  # (B, K, M): K sets of row losses
    for name, got in heads.deltas(c).items():
        torch.testing.assert_close(got, direct[name].transpose(0, 1), rtol=1e-5, atol=1e-6)
    for name, got in heads.deltas(c.mean(1)).items():
        torch.testing.assert_close(got, direct_mean[name], rtol=1e-5, atol=1e-6)
    norms = heads.row_norms_sq(c)
    torch.testing.assert_close(norms, loop.T, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(norms, tape.row_norms_sq(direct).T, rtol=1e-5, atol=0)
    torch.testing.assert_close(heads.row_norms_sq(c[:, 2]), loop[2], rtol=1e-5, atol=1e-9)

    # Moments and cross sums of two sets (the mean over the draws, and draw 0) against the
    # tape's one set at a time, from the direct backward passes.
    paired = tape.paired_moments(heads.deltas(torch.stack([c.mean(1), c[:, 0]], dim=1)))
    direct_first = {name: d[0] for name, d in direct.items()}
    want = [tape.moments_from(direct_mean), tape.moments_from(direct_first)]
    cross = tape.cross_sums(direct_mean, direct_first)
    for got, expected in zip(paired.moments, want, strict=True):
        assert got.n == expected.n and list(got.sums) == list(expected.sums)
        for key in expected.sums:
            torch.testing.assert_close(got.sums[key], expected.sums[key], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got.sq_sums[key], expected.sq_sums[key], rtol=1e-5, atol=0)
        torch.testing.assert_close(got.row_sq, expected.row_sq, rtol=1e-5, atol=0)
    for key, value in cross.items():
        torch.testing.assert_close(paired.cross[key][0, 1], value, rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(paired.cross[key][1, 0], value, rtol=1e-5, atol=1e-12)
    with pytest.raises(ValueError, match="trunk"):
        tape.heads(["trunk"])


def test_linear_tape_refuses_what_it_cannot_do():
    class FreeParameter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)
            self.scale = torch.nn.Parameter(torch.ones(2))

    with pytest.raises(ValueError, match="scale"):
        diagnostics.LinearTape(FreeParameter())
    layer = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="twice"), diagnostics.LinearTape(layer):
        layer(layer(torch.randn(3, 2)))


def test_reference_gradient_when_the_measurement_interval_crosses_reference_interval():
    agent = _agent()
    cfg = DiagnosticsConfig(interval=5, batch=16, reference_batch=64, reference_interval=10)
    has_reference = []
    for updates in (0, 5, 10, 15, 20, 27, 33):  # windows (u − 5, u]
        agent.updates = updates
        has_reference.append("grad/pathwise/cosine_reference" in agent.diagnose(cfg))
    assert has_reference == [True, False, True, False, True, False, True]
    rare = DiagnosticsConfig(interval=500, batch=16, reference_batch=64, reference_interval=100)
    agent.updates = 1500
    assert "grad/score/cosine_reference" in agent.diagnose(rare)
    never = DiagnosticsConfig(interval=1, batch=16, reference_interval=0)
    assert not any(k.endswith("cosine_reference") for k in agent.diagnose(never))


def test_diagnose_reports_both_estimators_and_their_ratio():
    agent = _agent()
    metrics = agent.diagnose(DiagnosticsConfig(interval=1, batch=16, reference_batch=64))
    for estimator in ("pathwise", "score"):
        for stat in ("grad_norm", "variance", "batch_variance", "snr", "noise_scale"):
            assert torch.isfinite(metrics[f"grad/{estimator}/{stat}"]) or stat == "noise_scale"
        assert -1.0 <= metrics[f"grad/{estimator}/cosine_reference"] <= 1.0
    ratio = metrics["grad/score/variance"] / metrics["grad/pathwise/variance"]
    assert metrics["grad/variance_ratio_score_over_pathwise"] == pytest.approx(ratio.item())


def test_batch_statistics_describe_the_training_batch_whatever_the_measurement_batch(
    monkeypatch: pytest.MonkeyPatch,
):
    agent = _agent()
    measured: list[dict[str, diagnostics.GradientMoments]] = []
    measure = agent.measure

    def recording_measure(obs: torch.Tensor, alpha: torch.Tensor):
        result = measure(obs, alpha)
        measured.append(result.moments)
        return result

    monkeypatch.setattr(agent, "measure", recording_measure)
    batch = agent.cfg.batch_size
    for n in (None, 48):
        cfg = DiagnosticsConfig(interval=1, batch=n, reference_interval=0, per_layer=True)
        metrics = agent.diagnose(cfg)
        for estimator in ("pathwise", "score"):
            m = measured[-1][estimator]
            variance = metrics[f"grad/{estimator}/variance"]
            norm_sq = metrics[f"grad/{estimator}/grad_norm"] ** 2
            # E‖ḡ_n‖² = ‖G‖² + tr Σ/n, so the B-sample ‖ḡ_B‖² is ‖ḡ_n‖² − tr Σ̂/n + tr Σ̂/B.
            signal = norm_sq - variance / m.n + variance / batch
            assert metrics[f"grad/{estimator}/batch_variance"] == pytest.approx(variance / batch)
            assert metrics[f"grad/{estimator}/snr"] == pytest.approx(signal * batch / variance)
            # The same for one layer, from its own moments.
            name = "trunk.0.weight"
            g_sum, g_sq = m.sums[name].double(), m.sq_sums[name]
            layer_norm_sq = (g_sum / m.n).pow(2).sum()
            layer_var = (g_sq / m.n - layer_norm_sq) * m.n / (m.n - 1)
            layer_signal = layer_norm_sq - layer_var / m.n + layer_var / batch
            assert metrics[f"grad/{estimator}/{name}/snr"] == pytest.approx(
                (layer_signal * batch / layer_var).item()
            )
    assert [m["score"].n for m in measured] == [batch // 2, 48]  # default: half the batch


@pytest.mark.parametrize(("n", "batch"), [(64, 64), (64, 256), (256, 64)])
def test_snr_of_pure_noise_is_about_one_whatever_the_measured_and_described_batch(n, batch):
    """Zero-mean per-sample gradients: ‖ḡ_B‖² ≈ tr Σ / B, so snr ≈ 1 for every n and B."""
    generator = torch.Generator().manual_seed(0)
    snrs = []
    for _ in range(400):
        grads = {"w": torch.randn(n, 50, generator=generator)}
        moments = diagnostics.GradientMoments.from_per_sample(grads)
        snrs.append(diagnostics.moment_statistics(moments, batch_size=batch)["snr"].item())
    # sd of one snr ≈ √(2/50)·√(1 + …) < 0.5 at these sizes: the mean of 400 is within ±0.1.
    assert np.mean(snrs) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize(
    ("config", "overrides", "interval"),
    [
        ("sac_pendulum.yaml", [], 100),
        ("ppo_pendulum.yaml", ["agent.n_steps=2048", "env.n_envs=1"], 1),
        ("ppo_pendulum.yaml", ["agent.n_steps=256", "env.n_envs=4"], 2),
        ("reinforce_invpendulum.yaml", ["agent.n_steps=5", "env.n_envs=1"], 410),
        ("sac_pendulum.yaml", ["diagnostics.interval=0"], 0),
        ("ppo_pendulum.yaml", ["diagnostics.interval=7"], 7),
    ],
)
def test_default_diagnostics_interval_measures_about_every_2048_steps(
    config: str, overrides: list[str], interval: int
) -> None:
    from rlgrad.agent import diagnostics_interval
    from rlgrad.agents import agent_spec
    from rlgrad.config import load_config
    from rlgrad.envs import EnvSpec
    from rlgrad.learner import Learner

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / config, overrides)
    spec = EnvSpec(obs_dim=3, act_dim=1)
    agent = agent_spec(cfg.agent.name).agent(
        cfg.agent, spec, Learner(cfg.learner), cfg.env.n_envs, cfg.total_steps
    )
    assert diagnostics_interval(agent, cfg.diagnostics) == interval
