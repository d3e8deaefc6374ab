"""REINFORCE's and PPO's gradient diagnostics: per-sample gradients against backward loops,
episode units, the baselines' variances, and ``grad/...`` records in a real run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from test_reinforce import REINFORCE_CONFIG, RecordingLearner, point_mass_overrides

from rlgrad import diagnostics
from rlgrad.agents import ppo, reinforce
from rlgrad.config import DiagnosticsConfig, load_config
from rlgrad.envs import EnvSpec
from rlgrad.runner import train

PPO_CONFIG = REINFORCE_CONFIG.parent / "ppo_pendulum.yaml"
T, N, OBS, ACT = 12, 2, 3, 2
STATS = ("grad_norm", "variance", "batch_variance", "snr", "noise_scale")


def fill(agent, seed: int = 0) -> None:
    """T vector steps of N envs: env 0 terminates at t = 3 and 8, env 1 is truncated at 6."""
    g = torch.Generator().manual_seed(seed)
    for t in range(T):
        agent.observe(
            torch.randn(N, OBS, generator=g),
            torch.randn(N, ACT, generator=g),
            torch.randn(N, generator=g),
            torch.randn(N, OBS, generator=g),
            torch.tensor([t in (3, 8), False]),
            torch.tensor([False, t == 6]),
        )


def reinforce_agent(**kw) -> reinforce.Agent:
    torch.manual_seed(0)
    settings = {"n_steps": T, "hidden_sizes": [8, 8], "value_epochs": 1, **kw}
    agent = reinforce.Agent(
        reinforce.Config(**settings), EnvSpec(OBS, ACT), RecordingLearner(), N, 1000
    )
    fill(agent)
    agent.update(global_step=T * N, measure=True)
    return agent


def ppo_agent(**kw) -> ppo.Agent:
    torch.manual_seed(0)
    settings = {
        "n_steps": T,
        "hidden_sizes": [8, 8],
        "batch_size": T * N,  # one minibatch: the first step's gradient is the whole rollout's
        "n_epochs": 1,
        "max_grad_norm": None,
        **kw,
    }
    agent = ppo.Agent(ppo.Config(**settings), EnvSpec(OBS, ACT), RecordingLearner(), N, 1000)
    fill(agent)
    agent.update(global_step=T * N, measure=True)
    return agent


def old_policy(agent) -> torch.nn.Module:
    """The policy with the parameters θ_old its last rollout was collected with."""
    policy = copy.deepcopy(agent.policy)
    policy.load_state_dict(agent.last_rollout["params"])
    return policy


def loop_rows(policy: torch.nn.Module, losses) -> torch.Tensor:
    """One ``backward()`` per sample loss, rows flattened in ``named_parameters`` order."""
    rows = []
    for loss in losses:
        policy.zero_grad(set_to_none=True)
        loss.backward()
        rows.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
    return torch.stack(rows)


def assert_rows_close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-5) -> None:
    err = (got - want).norm(dim=1) / want.norm(dim=1).clamp_min(1e-12)
    assert err.max() < rtol, err.max()


# ---- per-sample gradients = backward loops -------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"baseline": "none", "drop_incomplete": True, "ent_coef": 0.05},
        {"baseline": "mean"},
        {"baseline": "value", "advantage_normalization": "scale"},
        {"baseline": "gae"},
    ],
)
def test_reinforce_per_sample_grads_equal_backward_loop(settings):
    agent = reinforce_agent(**settings)
    r = agent.last_rollout
    grads = agent.policy_loss_per_sample(r["params"], r["obs"], r["actions"], r["advantages"])
    policy, c = old_policy(agent), agent.cfg.ent_coef

    def loss(i: int) -> torch.Tensor:
        dist = policy(r["obs"][i : i + 1])
        log_prob = dist.log_prob(r["actions"][i : i + 1])
        return -(log_prob * r["advantages"][i]).sum() - c * dist.entropy().sum()

    rows = diagnostics.flatten(grads)
    assert_rows_close(rows, loop_rows(policy, [loss(i) for i in range(T * N)]))

    # The steps the loss keeps, averaged: the gradient the update applied.
    keep = torch.ones(T * N, dtype=torch.bool) if r["weights"] is None else r["weights"] > 0
    applied = torch.cat([g.flatten() for g in agent.learner.grads["policy"][0]])
    torch.testing.assert_close(rows[keep].mean(0), applied, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("settings", [{}, {"ent_coef": 0.1, "normalize_advantage": False}])
def test_ppo_per_sample_grads_equal_backward_loop(settings):
    agent = ppo_agent(**settings)
    r = agent.last_rollout
    adv = r["advantages"]
    if agent.cfg.normalize_advantage:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    grads = agent.policy_loss_per_sample(
        r["params"], r["obs"], r["actions"], r["old_log_prob"], adv
    )
    policy, cfg = old_policy(agent), agent.cfg

    def loss(i: int) -> torch.Tensor:
        dist = policy(r["obs"][i : i + 1])
        ratio = (dist.log_prob(r["actions"][i : i + 1]) - r["old_log_prob"][i]).exp()
        surrogate, _ = ppo.clipped_surrogate(ratio, adv[i : i + 1], cfg.clip_range)
        return surrogate - cfg.ent_coef * dist.entropy().sum()

    rows = diagnostics.flatten(grads)
    assert_rows_close(rows, loop_rows(policy, [loss(i) for i in range(T * N)]))

    # At θ_old (ρ = 1) their mean is the gradient of the update's first (whole-rollout) step.
    n_policy = len(list(agent.policy.parameters()))
    applied = torch.cat([g.flatten() for g in agent.learner.grads["ppo"][0][:n_policy]])
    torch.testing.assert_close(rows.mean(0), applied, rtol=1e-5, atol=1e-7)


# ---- episodes ------------------------------------------------------------------------------


def test_episode_index_numbers_each_env_episode_fragment():
    terminated = torch.tensor([[0, 0], [1, 0], [0, 0], [0, 0]], dtype=torch.bool)
    truncated = torch.tensor([[0, 0], [0, 1], [0, 0], [1, 0]], dtype=torch.bool)
    index, n = diagnostics.episode_index(terminated, truncated)
    # Flat (time, env) order; env 0: steps 0–1 | 2–3, env 1: 0–1 | 2–3, numbered env-major.
    assert n == 4
    assert index.view(4, 2).tolist() == [[0, 2], [0, 2], [1, 3], [1, 3]]


def test_episode_gradients_sum_the_per_step_gradients_of_the_episode():
    agent = reinforce_agent(baseline="value")
    r = agent.last_rollout
    grads = agent.policy_loss_per_sample(r["params"], r["obs"], r["actions"], r["advantages"])
    episode, n_episodes = diagnostics.episode_index(r["terminated"], r["truncated"])
    sums = diagnostics.flatten(diagnostics.group_sums(grads, episode, n_episodes))

    # By hand: walk each env through time, closing an episode at every end.
    rows = diagnostics.flatten(grads).view(T, N, -1)
    done = r["terminated"] | r["truncated"]
    want = []
    for env in range(N):
        current = torch.zeros(rows.shape[-1])
        for t in range(T):
            current = current + rows[t, env]
            if done[t, env] or t == T - 1:
                want.append(current)
                current = torch.zeros(rows.shape[-1])
    assert n_episodes == len(want) == 5  # env 0: 3 episodes, env 1: 2
    torch.testing.assert_close(sums, torch.stack(want), rtol=1e-5, atol=1e-6)

    # The episode unit's estimates average to the same batch gradient.
    stats = diagnostics.step_and_episode_statistics(grads, episode, n_episodes)
    assert stats["grad_norm_per_episode"].item() == pytest.approx(
        stats["grad_norm_per_step"].item(), rel=1e-5
    )
    assert stats["episodes"].item() == 5


# ---- diagnose ------------------------------------------------------------------------------


def test_reinforce_diagnose_reports_both_units_and_every_baseline():
    agent = reinforce_agent(baseline="gae")
    metrics = agent.diagnose(DiagnosticsConfig(interval=1, per_layer=True))
    for unit in ("per_step", "per_episode"):
        for stat in STATS:
            assert f"grad/score/{stat}_{unit}" in metrics
        assert torch.isfinite(metrics[f"grad/score/variance_{unit}"])
        assert metrics[f"grad/score/mean.0.weight/variance_{unit}"] > 0
        variances = [
            metrics[f"grad/score/variance_baseline_{b}_{unit}"].item()
            for b in ("none", "mean", "value", "gae", "optimal")
        ]
        assert all(v > 0 for v in variances)
        assert len(set(variances)) == 5  # five different estimators
    assert metrics["grad/score/episodes"].item() == 5

    # The variance under the trained baseline, unnormalised, is that of the loss it trains.
    plain = reinforce_agent(baseline="value", advantage_normalization="none")
    metrics = plain.diagnose(DiagnosticsConfig(interval=1))
    assert metrics["grad/score/variance_baseline_value_per_step"].item() == pytest.approx(
        metrics["grad/score/variance_per_step"].item(), rel=1e-5
    )


def test_diagnostics_without_value_function_offer_none_mean_and_optimal():
    agent = reinforce_agent(baseline="mean")
    metrics = agent.diagnose(DiagnosticsConfig(interval=1))
    names = {k for k in metrics if "variance_baseline_" in k}
    assert names == {
        f"grad/score/variance_baseline_{b}_{u}"
        for b in ("none", "mean", "optimal")
        for u in ("per_step", "per_episode")
    }


def test_reinforce_optimal_baseline_trains_the_gradient_it_reports():
    """baseline=optimal: the update's gradient is −mean_t (Ĝ_t − b_tj) s_tj with the
    leave-one-out b_tj per element (checked against a loop of backward calls over steps), and
    the diagnostics' trained-gradient variance is that of the optimal-baseline estimates."""
    from rlgrad.estimators import optimal_baseline

    torch.manual_seed(0)
    settings = {"n_steps": T, "hidden_sizes": [8, 8], "baseline": "optimal"}
    cfg = reinforce.Config(advantage_normalization="none", **settings)
    agent = reinforce.Agent(cfg, EnvSpec(OBS, ACT), RecordingLearner(), N, 1000)
    fill(agent)
    buf = agent.buffer
    obs, actions = buf.flat("obs"), buf.flat("actions")
    returns = buf.compute_returns(agent.cfg.gamma, None)
    params = list(agent.policy.parameters())
    rows = []
    for t in range(obs.shape[0]):
        log_prob = agent.policy(obs[t : t + 1]).log_prob(actions[t : t + 1]).sum()
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(log_prob, params)]))
    scores = torch.stack(rows)  # (T·N, P)
    want = -((returns[:, None] - optimal_baseline(returns, scores)) * scores).mean(0)

    agent.update(global_step=T * N, measure=True)
    got = torch.cat([g.flatten() for g in agent.learner.grads["policy"][0]])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)

    metrics = agent.diagnose(DiagnosticsConfig(interval=1))
    assert metrics["grad/score/variance_per_step"].item() == pytest.approx(
        metrics["grad/score/variance_baseline_optimal_per_step"].item(), rel=1e-5
    )


def test_ppo_diagnose_reports_both_units():
    metrics = ppo_agent().diagnose(DiagnosticsConfig(interval=1))
    for unit in ("per_step", "per_episode"):
        for stat in STATS:
            assert f"grad/score/{stat}_{unit}" in metrics
    assert metrics["grad/score/variance_per_step"] > 0


def test_diagnose_before_any_update_returns_nothing():
    agent = reinforce.Agent(reinforce.Config(n_steps=T), EnvSpec(OBS, ACT), RecordingLearner(), N)
    assert agent.diagnose(DiagnosticsConfig(interval=1)) == {}


@pytest.mark.parametrize("make", [reinforce_agent, ppo_agent])
def test_snapshot_is_taken_only_for_a_measured_update(make):
    """The rollout and θ_old are copied only when ``update(..., measure=True)``; an update that
    is not measured drops the previous snapshot, so ``diagnose`` cannot describe a stale one."""
    agent = make()  # measured: the snapshot holds θ_old of that update
    assert agent.last_rollout is not None and agent.diagnose(DiagnosticsConfig(interval=1))
    fill(agent, seed=1)
    assert agent.update(global_step=2 * T * N)  # an update, not measured
    assert agent.last_rollout is None
    assert agent.diagnose(DiagnosticsConfig(interval=1)) == {}
    assert agent.update(global_step=2 * T * N, measure=True) == {}  # no full rollout: no update
    assert agent.last_rollout is None
    fill(agent, seed=2)
    before = {n: p.detach().clone() for n, p in agent.policy.named_parameters()}
    agent.update(global_step=3 * T * N, measure=True)
    snapshot = agent.last_rollout
    assert snapshot is not None and snapshot["params"].keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(snapshot["params"][name], value)
    assert not torch.equal(agent.policy.mean[0].weight, before["mean.0.weight"])  # θ moved


@pytest.mark.parametrize(
    ("agent", "n_steps", "n_envs", "interval"),
    [("ppo", 2048, 1, 1), ("ppo", 256, 4, 2), ("ppo", 100, 3, 7), ("reinforce", 5, 1, 410)],
)
def test_default_interval_is_the_first_update_after_each_2048_steps(
    agent, n_steps, n_envs, interval
):
    module = ppo if agent == "ppo" else reinforce
    made = module.Agent(
        module.Config(n_steps=n_steps), EnvSpec(OBS, ACT), RecordingLearner(), n_envs
    )
    assert made.default_diagnostics_interval() == interval


# ---- real runs -----------------------------------------------------------------------------


def grad_records(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if any(k.startswith("grad/") for k in row)]


@pytest.mark.parametrize("agent", ["reinforce", "ppo"])
def test_grad_metrics_reach_metrics_jsonl(tmp_path, agent):
    overrides = point_mass_overrides(
        agent, "agent.n_steps=50", "env.n_envs=2", "total_steps=400", "diagnostics.interval=2"
    )
    config = REINFORCE_CONFIG if agent == "reinforce" else PPO_CONFIG
    train(load_config(config, overrides), tmp_path / "run", quiet=True)
    records = grad_records(tmp_path / "run")
    assert len(records) == 2  # 4 updates, one measurement every 2
    for row in records:
        assert row["grad/score/variance_per_step"] > 0
        assert row["grad/score/variance_per_episode"] > 0
        assert row["grad/score/episodes"] == 4  # 50 steps of 25-step episodes, 2 envs
        if agent == "reinforce":
            assert row["grad/score/variance_baseline_none_per_step"] > 0


@pytest.mark.slow
def test_learned_value_baseline_reduces_variance_on_point_mass(tmp_path):
    """After 30 updates on PointMass the value baseline's per-step variance is far below that
    of no baseline (ratios 36–71 over seeds 0–2 when written)."""
    overrides = point_mass_overrides(
        "reinforce",
        "agent.baseline=value",
        "agent.n_steps=100",
        "agent.anneal_lr=false",
        "agent.learning_rate=3e-3",
        "env.n_envs=2",
        "total_steps=6000",
        "diagnostics.interval=10",
    )
    train(load_config(REINFORCE_CONFIG, overrides), tmp_path / "run", quiet=True)
    last = grad_records(tmp_path / "run")[-1]
    none = last["grad/score/variance_baseline_none_per_step"]
    assert last["grad/score/variance_baseline_value_per_step"] < none / 3
    assert last["grad/score/variance_baseline_mean_per_step"] < none / 3
