"""Discrete SAC: the critic target and the actor gradient against hand computations, the
diagnostics of the four categorical estimators, config checks, state round trip, and a short
learning check on CartPole."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from pydantic import ValidationError

from rlgrad.agents.sac_discrete import ESTIMATORS, Agent, Config
from rlgrad.buffers import Transitions
from rlgrad.config import ConfigError, DiagnosticsConfig, validate
from rlgrad.envs import EnvSpec, check_agent_fits
from rlgrad.learner import Learner
from rlgrad.runner import train

SPEC = EnvSpec(obs_dim=3, act_dim=1, n_actions=4)


def _agent(seed: int = 0, learner: Learner | None = None, **overrides) -> Agent:
    torch.manual_seed(seed)
    cfg = Config(**{"hidden_sizes": [16], "batch_size": 32, "learning_starts": 0, **overrides})
    return Agent(cfg, SPEC, learner or Learner(), n_envs=1)


def _fill(agent: Agent, n: int = 256) -> None:
    generator = torch.Generator().manual_seed(1)
    agent.observe(
        torch.randn(n, 3, generator=generator),
        torch.randint(4, (n, 1), generator=generator).float(),
        torch.randn(n, generator=generator),
        torch.randn(n, 3, generator=generator),
        torch.rand(n, generator=generator) < 0.1,
        torch.zeros(n, dtype=torch.bool),
    )


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Move every parameter by N(0, 0.3²) noise, so that networks differ from their copies."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))


# ---- the losses --------------------------------------------------------------------------------


def test_critic_target_matches_a_hand_computation():
    """y_j = r_j + γ (1 − d_j) Σ_a π(a|s'_j) [min_i Q̄_i(s'_j, a) − α log π(a|s'_j)], written
    out state by state, action by action and critic by critic; a truncation bootstraps."""
    agent = _agent(gamma=0.9)
    _perturb(agent.critic_target, 2)  # the target differs from the online critics
    _perturb(agent.actor, 3)  # a policy far from uniform
    alpha = 0.37
    g = torch.Generator().manual_seed(4)
    batch = Transitions(
        obs=torch.randn(3, 3, generator=g),
        actions=torch.tensor([[0.0], [3.0], [2.0]]),
        rewards=torch.tensor([1.0, -0.5, 2.0]),
        next_obs=torch.randn(3, 3, generator=g),
        terminated=torch.tensor([False, True, False]),
        truncated=torch.tensor([False, False, True]),
    )
    with torch.no_grad():
        expected_loss = 0.0
        ensemble = agent.critic_target
        online = agent.critic
        for j in range(3):
            logits = agent.actor.logits(batch.next_obs[j]).tolist()
            norm = math.log(sum(math.exp(x) for x in logits))
            log_pi = [x - norm for x in logits]
            q_bar = [
                [ensemble(batch.next_obs[j : j + 1])[i, 0, a].item() for a in range(4)]
                for i in range(2)
            ]
            soft_v = sum(
                math.exp(log_pi[a]) * (min(q_bar[0][a], q_bar[1][a]) - alpha * log_pi[a])
                for a in range(4)
            )
            done = bool(batch.terminated[j])
            y = batch.rewards[j].item() + 0.9 * (0.0 if done else soft_v)
            action = int(batch.actions[j, 0])
            for i in range(2):
                q = online(batch.obs[j : j + 1])[i, 0, action].item()
                expected_loss += 0.5 * (q - y) ** 2 / 3
        loss, _ = agent.critic_loss(batch, torch.tensor(alpha))
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
    # The hand computation is sensitive to what it checks: ignoring termination changes it.
    assert abs(expected_loss) > 1e-3


class RecordingLearner(Learner):
    """Keeps, for the actor's step, the networks it started from and the gradient it took."""

    def step(self, name, loss, max_grad_norm=None):
        if name == "actor":
            self.before = (copy.deepcopy(self.agent.actor), copy.deepcopy(self.agent.critic))
        norm = super().step(name, loss, max_grad_norm)
        if name == "actor":
            self.grads = [p.grad.clone() for p in self.params("actor")]
        return norm


def test_exact_actor_step_takes_the_gradient_of_the_hand_written_objective():
    """The update's actor gradient = ∇θ mean_s Σ_a π_a (α log π_a − min_i Q_i(s, a)),
    autograd on the same networks (the critics after their step, as the update uses them)."""
    learner = RecordingLearner()
    agent = _agent(learner=learner, ent_coef=0.3)
    learner.agent = agent
    _perturb(agent.actor, 5)
    _fill(agent)
    batch = agent.buffer.sample(32, generator=torch.Generator().manual_seed(6))
    agent.update_once(batch)

    actor, critic = learner.before
    logits = actor.logits(batch.obs)
    log_pi = torch.log_softmax(logits, -1)
    min_q = critic(batch.obs).min(0).values.detach()
    objective = (log_pi.exp() * (0.3 * log_pi - min_q)).sum(-1).mean()
    expected = torch.autograd.grad(objective, list(actor.parameters()))
    for got, want in zip(learner.grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert sum(g.abs().sum() for g in expected) > 1e-3


def test_alpha_rises_when_the_entropy_is_below_target_and_falls_above():
    for scale, direction in ((0.99, 1.0), (0.05, -1.0)):
        agent = _agent(target_entropy_scale=scale, actor_lr=1e-2)
        _perturb(agent.actor, 7)
        _fill(agent)
        before = agent.log_alpha.item()
        for _ in range(5):
            agent.update_once(agent.buffer.sample(32))
        assert direction * (agent.log_alpha.item() - before) > 0


# ---- diagnostics -------------------------------------------------------------------------------

STATS = ("bias", "bias_se", "bias_noise_floor", "variance", "cosine_exact", "snr")


def test_diagnostics_exact_is_exact_and_score_is_unbiased():
    agent = _agent(score_samples=4)
    _perturb(agent.actor, 8)
    _perturb(agent.critic, 9)
    _fill(agent, 1024)
    torch.manual_seed(10)
    metrics = agent.diagnose(DiagnosticsConfig(batch=1024))
    for name in ESTIMATORS:
        for stat in STATS:
            key = f"grad/{name}/{stat}"
            assert isinstance(metrics[key], torch.Tensor), key
            assert torch.isfinite(metrics[key]), key
    # The exact estimator against the closed form: equal up to float32 rounding.
    assert metrics["grad/exact/bias"] < 1e-5
    assert metrics["grad/exact/variance"] < 1e-9 * metrics["grad/exact/variance_total"]
    assert metrics["grad/exact/cosine_exact"] > 1 - 1e-9
    # The score function: noisy, unbiased (a bias at its noise floor is what none reads as).
    assert metrics["grad/score/variance"] > 1e-3 * metrics["grad/exact/variance_total"]
    assert metrics["grad/score/bias"] < 2 * metrics["grad/score/bias_noise_floor"]
    assert metrics["grad/score/cosine_exact"] > 0.5
    # Gumbel-softmax at τ = 1 is biased well beyond its noise.
    gumbel = metrics["grad/gumbel_softmax/bias"]
    assert gumbel > 3 * metrics["grad/gumbel_softmax/bias_noise_floor"]
    assert gumbel > 4 * metrics["grad/gumbel_softmax/bias_se"]
    # The snr of the exact gradient (state sampling only) beats the score function's.
    assert metrics["grad/exact/snr"] > metrics["grad/score/snr"]


def test_diagnostics_run_at_their_interval_in_a_run(tmp_path):
    import json

    cfg = validate(
        {
            "agent": {"name": "sac_discrete", "hidden_sizes": [16], "batch_size": 16,
                      "learning_starts": 50},
            "env": {"id": "CartPole-v1"},
            "total_steps": 200,
            "diagnostics": {"interval": 50},
            "eval": {"interval": 0, "episodes": 2},
            "logging": {"wandb": "disabled", "tensorboard": False},
        }
    )  # fmt: skip
    train(cfg, tmp_path / "run", quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    measured = [r["global_step"] for r in rows if "grad/score/snr" in r]
    assert measured == [100, 150, 200]
    assert all(
        f"grad/{name}/bias" in r for r in rows if "grad/score/snr" in r for name in ESTIMATORS
    )


# ---- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, -0.5])
def test_a_non_positive_gumbel_temperature_is_refused(temperature):
    with pytest.raises(ValidationError, match="gumbel_temperature"):
        Config(gumbel_temperature=temperature)
    with pytest.raises(ConfigError, match="gumbel_temperature"):
        validate(
            {
                "agent": {"name": "sac_discrete", "gumbel_temperature": temperature},
                "env": {"id": "CartPole-v1"},
                "total_steps": 100,
            }
        )


def test_config_checks():
    with pytest.raises(ValidationError, match="loo needs score_samples"):
        Config(score_samples=1)
    assert Config(score_samples=1, score_baseline="none").score_samples == 1
    with pytest.raises(ValidationError, match="ent_coef"):
        Config(ent_coef=0.0)
    with pytest.raises(ValidationError, match="actor_estimator"):
        Config(actor_estimator="pathwise")
    assert Config.action_spaces == ("discrete",)
    with pytest.raises(ConfigError, match="sac_discrete"):
        check_agent_fits("sac_discrete", "Pendulum-v1", "continuous")


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_estimator_trains_the_actor(estimator):
    agent = _agent(actor_estimator=estimator)
    _fill(agent)
    before = [p.detach().clone() for p in agent.actor.parameters()]
    metrics = agent.update_once(agent.buffer.sample(32))
    assert all(torch.isfinite(v) for v in metrics.values())
    moved = [not torch.equal(a, p) for a, p in zip(before, agent.actor.parameters(), strict=True)]
    assert all(moved)


# ---- acting and state --------------------------------------------------------------------------


def test_actions_are_float_indices_of_shape_n_by_1():
    agent = _agent(learning_starts=10)
    obs = torch.randn(64, 3)
    for actions in (agent.act(obs, 0), agent.act(obs, 10), agent.act_deterministic(obs)):
        assert actions.shape == (64, 1) and actions.dtype == torch.float32
        assert set(actions.flatten().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    _perturb(agent.actor, 11)
    logits = agent.actor.logits(obs)
    assert torch.equal(agent.act_deterministic(obs).squeeze(-1).long(), logits.argmax(-1))


def test_state_dict_round_trip_gives_identical_actions():
    agent = _agent(seed=0)
    _fill(agent)
    for _ in range(20):
        agent.update_once(agent.buffer.sample(32))
    state = copy.deepcopy(agent.state_dict())
    other = _agent(seed=1)
    obs = torch.randn(128, 3)
    assert not torch.equal(other.act_deterministic(obs), agent.act_deterministic(obs))
    other.load_state_dict(state)
    assert torch.equal(other.act_deterministic(obs), agent.act_deterministic(obs))
    torch.manual_seed(12)
    sampled = agent.act(obs, 10**6)
    torch.manual_seed(12)
    assert torch.equal(other.act(obs, 10**6), sampled)
    assert torch.equal(other.critic_target(obs), agent.critic_target(obs))
    assert other.updates == agent.updates == 20 and len(other.buffer) == len(agent.buffer)
    assert torch.equal(other.log_alpha, agent.log_alpha)
    # What acting needs alone (a policy file) gives the same actions too.
    third = _agent(seed=2)
    third.load_state_dict({**third.state_dict(), **agent.policy_state_dict()})
    assert torch.equal(third.act_deterministic(obs), agent.act_deterministic(obs))


# ---- learning ----------------------------------------------------------------------------------

CARTPOLE = {
    "agent": {"name": "sac_discrete", "hidden_sizes": [64, 64], "learning_starts": 500},
    "env": {"id": "CartPole-v1"},
    "total_steps": 4000,
    "diagnostics": {"interval": 0},
    "eval": {"interval": 0, "episodes": 10},
    "logging": {"wandb": "disabled", "tensorboard": False},
    "learner": {"torch_threads": 1},
}
RANDOM_POLICY_RETURN = 22.0  # CartPole-v1's mean episode length under uniform actions


@pytest.mark.slow
def test_learning_cartpole_well_above_a_random_policy(tmp_path):
    result = train(validate(CARTPOLE), tmp_path / "run", quiet=True)
    assert result.eval_return_mean > 5 * RANDOM_POLICY_RETURN, result
