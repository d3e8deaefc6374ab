"""agents/ppo.py: the clipped objective on hand-made ratios, the value loss, one update's
bookkeeping, its state, and a short learning check on PointMass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_reinforce import (
    POINT_MASS_THRESHOLD,
    RecordingLearner,
    metrics_without_timing,
    point_mass_overrides,
    untrained_and_random_returns,
)

from rlgrad.agents.ppo import Agent, Config, clipped_surrogate, value_loss
from rlgrad.config import load_config
from rlgrad.envs import EnvSpec
from rlgrad.runner import train

REPO = Path(__file__).resolve().parents[1]
PPO_CONFIG = REPO / "configs" / "ppo_pendulum.yaml"

# Hand-made ratios ρ and advantages Â, ε = 0.2. Per sample, min(ρÂ, clip(ρ, .8, 1.2)Â):
#   ρ = .5,  Â =  1:  min(.5, .8)    = .5    unclipped term chosen, ρ outside the band
#   ρ = .9,  Â = −1:  min(−.9, −.9)  = −.9   inside the band
#   ρ = 1.,  Â =  2:  2                      inside
#   ρ = 1.1, Â =  1:  1.1                    inside
#   ρ = 1.5, Â =  1:  min(1.5, 1.2)  = 1.2   clipped term chosen: no gradient
#   ρ = 1.5, Â = −1:  min(−1.5, −1.2) = −1.5 unclipped chosen (pessimistic bound)
#   ρ = .5,  Â = −1:  min(−.5, −.8)  = −.8   clipped chosen: no gradient
# sum = .5 − .9 + 2 + 1.1 + 1.2 − 1.5 − .8 = 1.6 → loss = −1.6 / 7; |ρ − 1| > .2 for 4 of 7.
RATIOS = [0.5, 0.9, 1.0, 1.1, 1.5, 1.5, 0.5]
ADVANTAGES = [1.0, -1.0, 2.0, 1.0, 1.0, -1.0, -1.0]


def test_clipped_surrogate_on_hand_made_ratios() -> None:
    ratio = torch.tensor(RATIOS, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor(ADVANTAGES, dtype=torch.float64)
    loss, clip_fraction = clipped_surrogate(ratio, adv, 0.2)
    assert float(loss.detach()) == pytest.approx(-1.6 / 7)
    assert float(clip_fraction) == pytest.approx(4 / 7)
    loss.backward()
    # d loss / d ρ_i = −Â_i / 7 where the unclipped term is chosen, 0 where the clipped one is.
    expected = [-1 / 7, 1 / 7, -2 / 7, -1 / 7, 0.0, 1 / 7, 0.0]
    assert ratio.grad.tolist() == pytest.approx(expected)


def test_value_loss_clipping() -> None:
    values = torch.tensor([1.0, 3.0, -2.0])
    old = torch.tensor([0.0, 2.9, 0.0])
    returns = torch.tensor([2.0, 2.0, 0.0])
    # Unclipped: ((2 − 1)² + (2 − 3)² + (0 + 2)²) / 3 = 2.
    assert float(value_loss(values, old, returns, None)) == pytest.approx(2.0)
    # Clipped at .5 around V_old: predictions .5, 3.0, −.5 → (1.5² + 1² + .5²) / 3.
    assert float(value_loss(values, old, returns, 0.5)) == pytest.approx((2.25 + 1 + 0.25) / 3)


T, N, OBS, ACT = 8, 2, 3, 2


def fill(agent: Agent, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for t in range(T):
        agent.observe(
            torch.randn(N, OBS, generator=g),
            torch.randn(N, ACT, generator=g),
            torch.randn(N, generator=g),
            torch.randn(N, OBS, generator=g),
            torch.tensor([t == 3, False]),
            torch.tensor([False, t == 5]),
        )


def test_update_runs_epochs_of_minibatches_and_logs() -> None:
    torch.manual_seed(0)
    learner = RecordingLearner()
    cfg = Config(n_steps=T, batch_size=5, n_epochs=3, hidden_sizes=[8])
    agent = Agent(cfg, EnvSpec(OBS, ACT), learner, N, total_steps=1000)
    assert agent.update(0) == {}  # nothing to do before the rollout is complete
    fill(agent)
    metrics = agent.update(T * N)
    # 16 transitions in minibatches of 5 → 4 per epoch, 3 epochs, one optimiser.
    assert list(learner.grads) == ["ppo"] and len(learner.grads["ppo"]) == 12
    for name in ("losses/policy", "losses/value", "train/entropy", "train/approx_kl"):
        assert torch.isfinite(metrics[name]), name
    # The first minibatch is taken at π_old: ratio 1, nothing clipped; later ones move.
    assert 0.0 <= float(metrics["train/clip_fraction"]) <= 1.0
    assert float(metrics["train/approx_kl"]) >= 0.0
    assert {k for k in metrics if k.startswith("losses/")} == {"losses/policy", "losses/value"}
    assert agent.buffer.pos == 0 and agent.updates == 1


def test_first_minibatch_is_at_old_policy() -> None:
    """One epoch of one minibatch is taken at π_old itself: ρ = 1, so approx-KL and the clip
    fraction are 0."""
    torch.manual_seed(0)
    cfg = Config(n_steps=T, batch_size=T * N, n_epochs=1, hidden_sizes=[8])
    agent = Agent(cfg, EnvSpec(OBS, ACT), RecordingLearner(), N)
    fill(agent)
    metrics = agent.update(T * N)
    assert float(metrics["train/approx_kl"]) == pytest.approx(0.0, abs=1e-6)
    assert float(metrics["train/clip_fraction"]) == 0.0


def test_target_kl_stops_early() -> None:
    torch.manual_seed(0)
    learner = RecordingLearner()
    cfg = Config(
        n_steps=T, batch_size=4, n_epochs=20, hidden_sizes=[8], learning_rate=0.05, target_kl=1e-4
    )
    agent = Agent(cfg, EnvSpec(OBS, ACT), learner, N)
    fill(agent)
    agent.update(T * N)
    assert 1 <= len(learner.grads["ppo"]) < 20 * 4


def test_anneal_lr() -> None:
    learner = RecordingLearner()
    cfg = Config(n_steps=T, batch_size=16, n_epochs=1, hidden_sizes=[8], anneal_lr=True)
    agent = Agent(cfg, EnvSpec(OBS, ACT), learner, N, total_steps=4 * T * N)
    for k in (1, 2, 3):
        fill(agent, k)
        metrics = agent.update(k * T * N)
    assert float(metrics["charts/learning_rate"]) == pytest.approx(0.5 * 3e-4)


def test_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    agent = Agent(Config(n_steps=T, hidden_sizes=[8]), EnvSpec(OBS, ACT), RecordingLearner(), N)
    fill(agent)
    agent.update(T * N)
    agent.observe(
        torch.ones(N, OBS), torch.ones(N, ACT), torch.ones(N), torch.ones(N, OBS),
        torch.zeros(N, dtype=torch.bool), torch.zeros(N, dtype=torch.bool),
    )  # fmt: skip
    torch.manual_seed(1)
    other = Agent(Config(n_steps=T, hidden_sizes=[8]), EnvSpec(OBS, ACT), RecordingLearner(), N)
    other.load_state_dict(agent.state_dict())
    obs = torch.randn(4, OBS)
    assert torch.equal(other.act_deterministic(obs), agent.act_deterministic(obs))
    assert torch.equal(other.value(obs), agent.value(obs))
    assert torch.equal(other.policy.log_std, agent.policy.log_std)
    assert other.buffer.pos == 1 and other.updates == 1
    assert torch.equal(other.buffer.obs[:1], agent.buffer.obs[:1])


def test_orthogonal_init_as_sb3() -> None:
    torch.manual_seed(0)
    agent = Agent(Config(), EnvSpec(OBS, ACT), RecordingLearner(), 1)
    first = agent.policy.mean[0].weight  # 64 × 3, gain √2: rows orthogonal up to the gain
    gram = first.T @ first
    torch.testing.assert_close(gram, 2.0 * torch.eye(OBS), atol=1e-5, rtol=1e-5)
    assert agent.policy.mean[-1].weight.abs().max() < 0.05  # gain 0.01
    assert torch.count_nonzero(agent.policy.mean[0].bias) == 0
    assert torch.equal(agent.policy.log_std, torch.zeros(ACT))
    assert isinstance(agent.policy.mean[1], torch.nn.Tanh)
    opt = RecordingLearner()
    Agent(Config(), EnvSpec(OBS, ACT), opt, 1)
    assert opt.optimizers["ppo"].defaults["eps"] == 1e-5


# ---- learning -----------------------------------------------------------------------------

LEARN = (
    "total_steps=8192",
    "env.n_envs=4",
    "agent.n_steps=256",
    "agent.batch_size=256",
    "agent.n_epochs=10",
    "agent.learning_rate=3e-3",
    "agent.gamma=0.95",
    "agent.hidden_sizes=[16]",
)


def test_learns_point_mass(tmp_path: Path) -> None:
    overrides = point_mass_overrides("ppo", *LEARN)
    untrained, uniform = untrained_and_random_returns(PPO_CONFIG, overrides)
    assert untrained < POINT_MASS_THRESHOLD and uniform < POINT_MASS_THRESHOLD
    result = train(load_config(PPO_CONFIG, overrides), tmp_path / "run", quiet=True)
    assert result.eval_return_mean > POINT_MASS_THRESHOLD, result


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    overrides = point_mass_overrides(
        "ppo", "total_steps=1024", "env.n_envs=2", "agent.n_steps=128", "agent.batch_size=32",
        "agent.n_epochs=2", "agent.hidden_sizes=[8]", "logging.interval=256", "seed=5",
    )  # fmt: skip
    for name in ("a", "b"):
        train(load_config(PPO_CONFIG, overrides), tmp_path / name, quiet=True)
    a, b = metrics_without_timing(tmp_path / "a"), metrics_without_timing(tmp_path / "b")
    assert any("train/approx_kl" in row for row in a)
    assert a == b
