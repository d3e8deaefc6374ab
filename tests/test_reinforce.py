"""agents/reinforce.py: the score-function gradient it applies, its baselines, its state, and a
short learning check on PointMass (test_ppo.py imports the helpers defined here)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from rlgrad.agents.reinforce import Agent, Config, normalize, policy_gradient_loss
from rlgrad.checkpoint import load_checkpoint, save_checkpoint
from rlgrad.config import ConfigError, LearnerConfig, load_config
from rlgrad.envs import EnvSpec, env_spec, make_env
from rlgrad.learner import Learner
from rlgrad.networks import GaussianPolicy
from rlgrad.runner import EVAL_SEED_OFFSET, eval_seed, evaluate, train

REPO = Path(__file__).resolve().parents[1]
REINFORCE_CONFIG = REPO / "configs" / "reinforce_invpendulum.yaml"
POINT_MASS = "rlgrad/PointMass-v0"
# PointMass: a uniformly random policy scores about −19, an untrained one (mean ≈ 0: it stays
# where it starts) about the same, a good one about −3.
POINT_MASS_THRESHOLD = -5.0

# ---- helpers (also used by test_ppo.py) -------------------------------------------------------


class RecordingLearner(Learner):
    """A Learner that also records, per optimiser, the gradient of every loss it is handed."""

    def __init__(self, cfg: LearnerConfig | None = None):
        super().__init__(cfg or LearnerConfig(device="cpu"))
        self.grads: dict[str, list[list[torch.Tensor]]] = {}

    def step(self, name, loss, max_grad_norm=None):
        grads = torch.autograd.grad(loss, self.params(name), retain_graph=True)
        self.grads.setdefault(name, []).append([g.detach().clone() for g in grads])
        return super().step(name, loss, max_grad_norm)


def point_mass_overrides(agent: str, *extra: str) -> list[str]:
    return [
        f"agent.name={agent}",
        f"env.id={POINT_MASS}",
        "env.normalize_obs=false",
        "env.normalize_reward=false",
        "logging.wandb=disabled",
        "logging.tensorboard=false",
        "logging.interval=400",
        "learner.torch_threads=1",
        "learner.device=cpu",
        "eval.interval=0",
        "eval.episodes=20",
        *extra,
    ]


def untrained_and_random_returns(config: Path, overrides: list[str]) -> tuple[float, float]:
    """Mean eval return, on the runner's eval episodes, of the untrained agent (its mode) and
    of uniformly random actions."""
    from rlgrad.agents import agent_spec

    cfg = load_config(config, overrides)
    torch.manual_seed(cfg.seed)
    learner = Learner(cfg.learner)
    seed = eval_seed(cfg.seed, 0)  # the episodes of the runner's first evaluation
    envs = make_env(cfg.env, cfg.seed + EVAL_SEED_OFFSET, n_envs=cfg.eval.episodes, training=False)
    try:
        agent = agent_spec(cfg.agent.name).agent(
            cfg.agent, env_spec(envs), learner, envs.num_envs, cfg.total_steps
        )
        untrained = evaluate(agent, envs, learner.device, seed, True, 0).mean()

        class Uniform:
            def act_deterministic(self, obs: torch.Tensor) -> torch.Tensor:
                return torch.rand(obs.shape[0], 1) * 2.0 - 1.0

        uniform = evaluate(Uniform(), envs, learner.device, seed, True, 0).mean()  # type: ignore[arg-type]
    finally:
        envs.close()
    return float(untrained), float(uniform)


def metrics_without_timing(run_dir: Path) -> list[dict]:
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        row.pop("charts/sps", None)
        rows.append(row)
    return rows


# ---- the gradient -----------------------------------------------------------------------------

T, N, OBS, ACT = 4, 2, 3, 2
GAMMA = 0.9


def rollout(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """T vector steps of N envs; env 0 terminates at t = 1, env 1 is truncated at t = 2."""
    g = torch.Generator().manual_seed(seed)
    steps = []
    for t in range(T):
        steps.append(
            {
                "obs": torch.randn(N, OBS, generator=g),
                "actions": torch.randn(N, ACT, generator=g),
                "rewards": torch.randn(N, generator=g),
                "next_obs": torch.randn(N, OBS, generator=g),
                "terminated": torch.tensor([t == 1, False]),
                "truncated": torch.tensor([False, t == 2]),
            }
        )
    return steps


def returns_by_hand(steps, next_value=None) -> torch.Tensor:
    """Ĝ_t per env by an explicit backward sum; bootstrap with ``next_value(next_obs)`` at a
    truncation and at the end of the rollout when given, else cut there."""
    G = torch.zeros(T, N)
    for i in range(N):
        running = 0.0
        for t in reversed(range(T)):
            s = steps[t]
            if bool(s["terminated"][i]):
                running = float(s["rewards"][i])
            elif bool(s["truncated"][i]) or t == T - 1:
                boot = float(next_value(s["next_obs"][i : i + 1])) if next_value else 0.0
                running = float(s["rewards"][i]) + GAMMA * boot
            else:
                running = float(s["rewards"][i]) + GAMMA * running
            G[t, i] = running
    return G


def make_agent(baseline: str, learner: Learner, **kw) -> Agent:
    settings = {
        "n_steps": T,
        "gamma": GAMMA,
        "hidden_sizes": [5],
        "advantage_normalization": "none",
        "value_epochs": 1,
        "value_batch_size": T * N,
    }
    cfg = Config(baseline=baseline, **{**settings, **kw})
    return Agent(cfg, EnvSpec(OBS, ACT), learner, N, total_steps=1000)


@pytest.mark.parametrize("baseline", ["none", "mean", "value"])
def test_policy_gradient_is_mean_of_per_sample_score_times_advantage(baseline: str) -> None:
    torch.manual_seed(0)
    learner = RecordingLearner()
    agent = make_agent(baseline, learner)
    steps = rollout()
    for s in steps:
        agent.observe(**s)
    policy = copy.deepcopy(agent.policy)
    value = copy.deepcopy(agent.value)
    agent.update(global_step=T * N)

    # Advantages by hand.
    if baseline == "value":
        G = returns_by_hand(steps, lambda o: value(o).detach())
        adv = G - torch.stack([value(s["obs"]).detach() for s in steps])
    else:
        G = returns_by_hand(steps)
        adv = G - G.mean() if baseline == "mean" else G  # the first rollout: its own mean

    # −(1/B) Σ_i ∇ log π(a_i|s_i) A_i, one backward call per sample.
    params = list(policy.parameters())
    expected = [torch.zeros_like(p) for p in params]
    for t in range(T):
        for i in range(N):
            s = steps[t]
            log_prob = policy(s["obs"][i : i + 1]).log_prob(s["actions"][i : i + 1]).sum()
            for p in params:
                p.grad = None
            log_prob.backward()
            for e, p in zip(expected, params, strict=True):
                e -= p.grad * float(adv[t, i]) / (T * N)

    (got,) = learner.grads["policy"]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_policy_gradient_loss_weights_and_normalize() -> None:
    log_prob = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 2.0])
    loss = policy_gradient_loss(log_prob, adv, torch.tensor([1.0, 0.0, 1.0]))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(-(1.0 + 6.0) / 2)
    assert log_prob.grad.tolist() == [-0.5, 0.0, -1.0]  # the dropped step has no gradient
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    w = torch.tensor([1.0, 1.0, 1.0, 0.0])
    z = normalize(x, w)
    assert z[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    assert normalize(x[:3], center=False).tolist() == pytest.approx([1.0, 2.0, 3.0], abs=1e-6)


def test_mean_baseline_is_a_moving_average_of_earlier_rollouts() -> None:
    torch.manual_seed(0)
    learner = RecordingLearner()
    agent = make_agent("mean", learner, mean_baseline_decay=0.75)
    first, second = rollout(0), rollout(1)
    for s in first:
        agent.observe(**s)
    agent.update(T * N)
    b1 = returns_by_hand(first).mean()
    assert float(agent.return_mean) == pytest.approx(float(b1), rel=1e-6)
    for s in second:
        agent.observe(**s)
    advantages, _, _ = agent.advantages(None, None)
    G2 = returns_by_hand(second)
    # The second rollout's baseline is the first one's mean, then b ← .75 b + .25 mean G2.
    torch.testing.assert_close(advantages, (G2 - b1).reshape(-1))
    assert float(agent.return_mean) == pytest.approx(float(0.75 * b1 + 0.25 * G2.mean()), 1e-6)


def test_drop_incomplete_gives_the_unfinished_tail_zero_weight() -> None:
    learner = RecordingLearner()
    agent = make_agent("none", learner, drop_incomplete=True)
    for s in rollout():
        agent.observe(**s)
    _, _, weights = agent.advantages(None, None)
    # env 0 terminates at t = 1, then runs unfinished; env 1 is truncated at t = 2.
    assert weights.view(T, N).tolist() == [[1.0, 1.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]


def test_gae_baseline_steps_policy_and_value() -> None:
    learner = RecordingLearner()
    agent = make_agent("gae", learner, gae_lambda=0.8, value_epochs=3)
    for s in rollout():
        agent.observe(**s)
    metrics = agent.update(T * N)
    assert len(learner.grads["policy"]) == 1 and len(learner.grads["value"]) == 3
    assert {"losses/policy", "losses/value", "train/entropy"} <= set(metrics)
    assert not {"losses/std", "losses/entropy", "losses/return_mean"} & set(metrics)
    assert agent.buffer.pos == 0


def test_anneal_lr_is_linear_in_steps() -> None:
    learner = RecordingLearner()
    agent = make_agent("value", learner, anneal_lr=True, learning_rate=1e-2)
    agent.total_steps = 4 * T * N
    for k in range(1, 3):
        for s in rollout(k):
            agent.observe(**s)
        agent.update(k * T * N)
    # The second update started at 1/4 of the budget.
    assert learner.optimizers["policy"].param_groups[0]["lr"] == pytest.approx(0.75e-2)
    assert learner.optimizers["value"].param_groups[0]["lr"] == pytest.approx(0.75e-3)


def test_unknown_baseline_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="agent.baseline"):
        load_config(REINFORCE_CONFIG, ["agent.baseline=median"])


def test_state_dict_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    agent = make_agent("mean", RecordingLearner())
    for s in rollout():
        agent.observe(**s)
    agent.update(T * N)
    for s in rollout(1)[:2]:  # a half-full buffer
        agent.observe(**s)
    path = save_checkpoint(tmp_path / "a.pt", {"agent": agent.state_dict()})
    state = load_checkpoint(path)["agent"]  # weights_only=True must accept it

    torch.manual_seed(1)
    other = make_agent("mean", RecordingLearner())
    other.load_state_dict(state)
    for a, b in zip(agent.policy.parameters(), other.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    assert other.buffer.pos == 2 and torch.equal(other.buffer.obs[:2], agent.buffer.obs[:2])
    assert torch.equal(other.return_mean, agent.return_mean) and other.return_mean_ready
    assert other.updates == 1
    obs = torch.randn(5, OBS)
    assert torch.equal(other.act_deterministic(obs), agent.act_deterministic(obs))
    value_agent = make_agent("value", RecordingLearner())
    restored = make_agent("value", RecordingLearner())
    restored.load_state_dict(value_agent.state_dict())
    assert torch.equal(restored.value(obs), value_agent.value(obs))


# ---- learning -----------------------------------------------------------------------------

LEARN = (
    "total_steps=16000",
    "env.n_envs=8",
    "agent.n_steps=50",
    "agent.learning_rate=0.01",
    "agent.hidden_sizes=[16]",
    "agent.value_epochs=5",
    "agent.value_batch_size=100",
    "agent.value_learning_rate=0.01",
)


def test_learns_point_mass(tmp_path: Path) -> None:
    overrides = point_mass_overrides("reinforce", *LEARN)
    untrained, uniform = untrained_and_random_returns(REINFORCE_CONFIG, overrides)
    assert untrained < POINT_MASS_THRESHOLD and uniform < POINT_MASS_THRESHOLD
    result = train(load_config(REINFORCE_CONFIG, overrides), tmp_path / "run", quiet=True)
    assert result.eval_return_mean > POINT_MASS_THRESHOLD, result


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    overrides = point_mass_overrides(
        "reinforce", "total_steps=1600", "env.n_envs=4", "agent.n_steps=100",
        "agent.hidden_sizes=[8]", "logging.interval=400", "seed=3",
    )  # fmt: skip
    for name in ("a", "b"):
        train(load_config(REINFORCE_CONFIG, overrides), tmp_path / name, quiet=True)
    a, b = metrics_without_timing(tmp_path / "a"), metrics_without_timing(tmp_path / "b")
    assert any("losses/policy" in row for row in a)
    assert a == b


def test_sample_action_is_the_distributions_sample_from_the_same_draw():
    torch.manual_seed(0)
    policy = GaussianPolicy(3, 2, [16, 16], "tanh", -0.5, True)
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([-0.5, 0.3]))
    obs = torch.randn(5, 3)
    torch.manual_seed(1)
    expected = policy(obs).sample()
    torch.manual_seed(1)
    got = policy.sample_action(obs)
    assert torch.equal(got, expected) and not got.requires_grad


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
def test_sample_action_follows_reloaded_and_converted_parameters(activation):
    torch.manual_seed(0)
    policy = GaussianPolicy(3, 2, [16, 16], activation, 0.0, True)
    other = GaussianPolicy(3, 2, [16, 16], activation, 0.7, False)
    policy.load_state_dict(other.state_dict())
    policy.double()
    obs = torch.randn(5, 3, dtype=torch.float64)
    torch.manual_seed(1)
    expected = policy(obs).sample()
    torch.manual_seed(1)
    got = policy.sample_action(obs)
    assert got.dtype == torch.float64 and torch.equal(got, expected)
    copied = copy.deepcopy(policy)
    with torch.no_grad():
        copied.mean[0].weight.add_(1.0)  # the copy acts with its own parameters
    torch.manual_seed(1)
    assert not torch.equal(copied.sample_action(obs), expected)
    torch.manual_seed(1)
    from_copy = copied.sample_action(obs)
    torch.manual_seed(1)
    assert torch.equal(from_copy, copied(obs).sample())
