"""rlgrad's gradient diagnostics as a Stable-Baselines3 callback, on SB3's own SAC, PPO and A2C
(Gaussian and, on CartPole, categorical policies).

Logged keys read back from SB3's JSON output; per-sample rows against loops of ordinary
reverse-mode calls on SB3's objects; SB3's squashed-Gaussian log-density against rlgrad's; the
callback leaving training untouched (parameters, optimisers, RNG streams); and a one-line error
for the spaces it does not measure.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

sb3 = pytest.importorskip("stable_baselines3")

from stable_baselines3 import A2C, PPO, SAC  # noqa: E402
from stable_baselines3.common.logger import configure  # noqa: E402

from rlgrad.distributions import TanhGaussian  # noqa: E402
from rlgrad.integrations.sb3 import (  # noqa: E402
    GradientDiagnosticsCallback,
    sb3_squashed_log_prob,
)

STATS = ("grad_norm", "variance", "batch_variance", "snr", "noise_scale", "cosine_reference")


def _sac(seed: int = 0) -> SAC:
    return SAC(
        "MlpPolicy",
        "Pendulum-v1",
        policy_kwargs={"net_arch": [32, 32]},  # SB3 adds keys to this dict
        learning_starts=100,
        batch_size=64,
        device="cpu",
        seed=seed,
    )


def _ppo(seed: int = 0) -> PPO:
    return PPO(
        "MlpPolicy",
        "Pendulum-v1",
        n_steps=128,
        batch_size=64,
        n_epochs=2,
        policy_kwargs={"net_arch": [32, 32]},  # SB3 adds keys to this dict
        device="cpu",
        seed=seed,
    )


def _cartpole(algo: type, seed: int = 0, **kwargs) -> PPO | A2C:
    """A discrete-action (Categorical) model on CartPole-v1."""
    return algo(
        "MlpPolicy",
        "CartPole-v1",
        policy_kwargs={"net_arch": [16]},  # SB3 adds keys to this dict
        device="cpu",
        seed=seed,
        **kwargs,
    )


def _records(folder: Path) -> list[dict]:
    lines = (folder / "progress.json").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _check_logged(rows: list[dict], estimator: str, suffix: str = "") -> None:
    with_grad = [r for r in rows if f"grad/{estimator}/variance{suffix}" in r]
    assert with_grad, f"no grad/{estimator} keys in progress.json"
    for row in with_grad:
        for stat in STATS:
            value = row[f"grad/{estimator}/{stat}{suffix}"]
            assert math.isfinite(value) or (stat == "noise_scale" and value == math.inf), stat
        assert row[f"grad/{estimator}/variance{suffix}"] > 0
        assert row[f"grad/{estimator}/batch_variance{suffix}"] > 0
        assert -1.0 <= row[f"grad/{estimator}/cosine_reference{suffix}"] <= 1.0


@pytest.fixture(scope="module")
def trained_sac(tmp_path_factory) -> tuple[SAC, GradientDiagnosticsCallback, Path]:
    folder = tmp_path_factory.mktemp("sac_log")
    model = _sac()
    model.set_logger(configure(str(folder), ["json", "log"]))
    callback = GradientDiagnosticsCallback(
        interval=100, batch=64, reference_batch=256, per_layer=True
    )
    model.learn(400, callback=callback, log_interval=1)
    return model, callback, folder


def test_sac_callback_logs_both_estimators(trained_sac):
    _, callback, folder = trained_sac
    assert callback.n_measurements == 4  # at 100, 200, 300, 400 steps
    rows = _records(folder)
    for estimator in ("pathwise", "score"):
        _check_logged(rows, estimator)
        assert f"grad/{estimator}/mu.weight/snr" in rows[-1]  # per_layer
    last = rows[-1]
    assert -1.0 <= last["grad/cosine_score_pathwise"] <= 1.0
    ratio = last["grad/score/variance"] / last["grad/pathwise/variance"]
    assert last["grad/variance_ratio_score_over_pathwise"] == pytest.approx(ratio)
    assert last["time/grad_diagnostics_s"] > 0
    # Per-layer keys stay out of the text output (SB3 truncates keys there to 36 chars).
    text = (folder / "log.txt").read_text()
    assert "variance_ratio_score_over" in text and "mu.weight" not in text


def test_ppo_callback_logs_per_step_policy_gradient(tmp_path):
    model = _ppo()
    model.set_logger(configure(str(tmp_path), ["json"]))
    callback = GradientDiagnosticsCallback(interval=100, batch=64, reference_batch=128)
    model.learn(256, callback=callback)
    assert callback.n_measurements == 2  # one per rollout of 128 steps
    rows = _records(tmp_path)
    _check_logged(rows, "score", suffix="_per_step")
    assert len([r for r in rows if "grad/score/snr_per_step" in r]) == 2


def _actor_rows(actor, losses: list[torch.Tensor]) -> torch.Tensor:
    params = [p for p in actor.parameters()]
    rows = [torch.cat([g.flatten() for g in torch.autograd.grad(l, params)]) for l in losses]
    return torch.stack(rows)


def _sb3_log_prob(actor, obs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """SB3's own SquashedDiagGaussianDistribution.log_prob at pre-tanh u (rows of obs)."""
    mean, log_std, _ = actor.get_action_dist_params(obs)
    dist = copy.copy(actor.action_dist).proba_distribution(mean, log_std)
    return dist.log_prob(torch.tanh(u), u)


def _sb3_min_q(model, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return torch.cat(model.critic(obs, actions), dim=1).min(dim=1).values


def test_sac_pathwise_rows_equal_backward_loop(trained_sac):
    model, _, _ = trained_sac
    callback = GradientDiagnosticsCallback(seed=3)
    callback.init_callback(model)
    actor = model.actor
    alpha = model.log_ent_coef.detach().exp().reshape(())
    torch.manual_seed(11)
    obs = torch.randn(5, 3)
    eps = torch.randn(5, 1, generator=torch.Generator().manual_seed(3))  # the callback's draw
    got = torch.cat(
        [g.reshape(5, -1) for g in callback.sac_per_sample("pathwise", obs, alpha).values()], 1
    )
    losses = []
    for i in range(5):  # SB3's actor objective, one state and one noise draw at a time
        mean, log_std, _ = actor.get_action_dist_params(obs[i : i + 1])
        u = mean + log_std.exp() * eps[i : i + 1]
        log_prob = _sb3_log_prob(actor, obs[i : i + 1], u)
        losses.append((alpha * log_prob - _sb3_min_q(model, obs[i : i + 1], torch.tanh(u))).sum())
    want = _actor_rows(actor, losses)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_sac_score_rows_equal_backward_loop(trained_sac):
    model, _, _ = trained_sac
    callback = GradientDiagnosticsCallback(score_samples=4, seed=4)
    callback.init_callback(model)
    actor = model.actor
    alpha = model.log_ent_coef.detach().exp().reshape(())
    torch.manual_seed(12)
    obs = torch.randn(5, 3)
    eps = torch.randn(4, 5, 1, generator=torch.Generator().manual_seed(4))  # the callback's draw
    with torch.no_grad():
        mean, log_std, _ = actor.get_action_dist_params(obs)
        u = mean + log_std.exp() * eps  # pre-tanh actions, K = 4 per state
    got = torch.cat(
        [g.reshape(5, -1) for g in callback.sac_per_sample("score", obs, alpha).values()], 1
    )
    losses = []
    for i in range(5):  # K = 4 actions at state i, leave-one-out baseline, SB3's objects
        obs_k = obs[i : i + 1].expand(4, 3)
        with torch.no_grad():
            h = alpha * _sb3_log_prob(actor, obs_k, u[:, i]) - _sb3_min_q(
                model, obs_k, torch.tanh(u[:, i])
            )
            advantage = h - (h.sum() - h) / 3
        losses.append(((advantage + alpha) * _sb3_log_prob(actor, obs_k, u[:, i])).mean())
    want = _actor_rows(actor, losses)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_ppo_rows_equal_backward_loop():
    model = _ppo()
    callback = GradientDiagnosticsCallback()
    callback.init_callback(model)
    torch.manual_seed(13)
    obs, actions, advantages = torch.randn(4, 3), torch.randn(4, 1), torch.randn(4)
    grads = callback.policy_gradient_per_step(obs, actions, advantages)
    assert not any(name.startswith(("value_net", "mlp_extractor.value_net")) for name in grads)
    got = torch.cat([g.reshape(4, -1) for g in grads.values()], 1)
    params = dict(model.policy.named_parameters())
    rows = []
    for i in range(4):
        _, log_prob, _ = model.policy.evaluate_actions(obs[i : i + 1], actions[i : i + 1])
        loss = -(advantages[i] * log_prob).sum()
        rows.append(
            torch.cat([g.flatten() for g in torch.autograd.grad(loss, [params[n] for n in grads])])
        )
    np.testing.assert_allclose(got.numpy(), torch.stack(rows).numpy(), rtol=1e-5, atol=1e-6)


def _policy_rows(policy, obs: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor):
    """One backward call per step through SB3's ``evaluate_actions``: rows of ∇ of
    −A_t log π(a_t|s_t) over all the policy's parameters (zeros where log π does not reach)."""
    params = list(policy.parameters())
    rows = []
    for i in range(len(obs)):
        _, log_prob, _ = policy.evaluate_actions(obs[i : i + 1], actions[i : i + 1])
        loss = -(advantages[i] * log_prob).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [
            torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)
        ]
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)


def _rows_of(policy, grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """The callback's per-step gradients laid out as :func:`_policy_rows` lays out its rows."""
    n = next(iter(grads.values())).shape[0]
    return torch.cat(
        [
            (grads[name] if name in grads else p.new_zeros(n, *p.shape)).reshape(n, -1)
            for name, p in policy.named_parameters()
        ],
        dim=1,
    )


def test_discrete_ppo_rows_equal_backward_loop():
    model = _cartpole(PPO, n_steps=32, batch_size=16, n_epochs=1)
    model.learn(32)  # one rollout of CartPole's integer actions in the buffer
    callback = GradientDiagnosticsCallback()
    callback.init_callback(model)
    buf = model.rollout_buffer
    steps = np.arange(0, 32, 4)
    obs, actions, advantages = callback._rollout_tensors(steps)
    assert actions.dtype == torch.int64 and actions.shape == (8,)
    grads = callback.policy_gradient_per_step(obs, actions, advantages)
    assert grads and not any("value_net" in name for name in grads)

    # PPO.train's path: the buffer's (n, 1) float32 column, .long().flatten(), and the advantages
    # normalised over the steps (normalize_advantage).
    column = torch.as_tensor(buf.actions.reshape(32, 1)[steps].astype(np.float32))
    adv = torch.as_tensor(buf.advantages.reshape(32)[steps])
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    torch.testing.assert_close(advantages, adv)
    want = _policy_rows(model.policy, obs, column.long().flatten(), adv)
    got = _rows_of(model.policy, grads)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    assert want.abs().sum() > 0

    # The float column goes in as indices too (not broadcast to (n, n) log-probabilities).
    from_column = callback.policy_gradient_per_step(obs, column, advantages)
    np.testing.assert_allclose(_rows_of(model.policy, from_column).numpy(), got.numpy())
    # torch's Categorical support check runs inside vmap: an out-of-range action is caught.
    # (Validation is on by default, but torch._dynamo turns it off for the whole process once
    # anything is compiled, so the check is switched on here explicitly.)
    validating = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(True)
    try:
        with pytest.raises(ValueError, match="support"):
            callback.policy_gradient_per_step(obs, actions + 2, advantages, names=list(grads))
    finally:
        torch.distributions.Distribution.set_default_validate_args(validating)


def test_discrete_a2c_logs_per_step_variance_of_the_loop_rows(tmp_path, monkeypatch):
    model = _cartpole(A2C, n_steps=16)
    model.set_logger(configure(str(tmp_path), ["json"]))
    callback = GradientDiagnosticsCallback(interval=16, batch=8, reference_batch=16)
    seen: dict = {}
    draw_steps, measure = callback._draw_steps, callback.measure

    def recording_draw_steps(n_total: int, n: int) -> np.ndarray:
        seen["steps"] = draw_steps(n_total, n)  # the reference's steps, then the batch's
        return seen["steps"]

    def recording_measure() -> dict:
        seen["policy"] = copy.deepcopy(model.policy.state_dict())  # before train() changes it
        return measure()

    monkeypatch.setattr(callback, "_draw_steps", recording_draw_steps)
    monkeypatch.setattr(callback, "measure", recording_measure)
    model.learn(32, callback=callback, log_interval=1)
    assert callback.n_measurements == 2  # one per rollout of 16 steps
    rows = _records(tmp_path)
    _check_logged(rows, "score", suffix="_per_step")
    last = [r for r in rows if "grad/score/variance_per_step" in r][-1]

    # By hand, at the last measurement's policy and steps (A2C.train leaves the buffer's values
    # as they were; advantages are not normalised): tr of the unbiased covariance of the rows.
    steps = seen["steps"]
    assert len(steps) == 8
    model.policy.load_state_dict(seen["policy"])
    buf = model.rollout_buffer
    all_rows = _policy_rows(
        model.policy,
        torch.as_tensor(buf.observations.reshape(16, -1)),
        torch.as_tensor(buf.actions.reshape(16)).long(),
        torch.as_tensor(buf.advantages.reshape(16)),
    ).double()
    rows_by_hand = all_rows[steps]
    variance = rows_by_hand.var(dim=0).sum().item()
    assert last["grad/score/variance_per_step"] == pytest.approx(variance, rel=1e-5)
    assert last["grad/score/batch_variance_per_step"] == pytest.approx(variance / 8, rel=1e-5)
    mean = rows_by_hand.mean(0)
    assert last["grad/score/grad_norm_per_step"] == pytest.approx(mean.norm().item(), rel=1e-5)
    # The reference is the whole rollout's gradient (reference_batch ≥ its 16 steps).
    cosine = torch.nn.functional.cosine_similarity(mean, all_rows.mean(0), dim=0).item()
    assert last["grad/score/cosine_reference_per_step"] == pytest.approx(cosine, abs=1e-5)


class _SpacesEnv(gym.Env):
    """Random observations and rewards in the given spaces."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space):
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


BOX = spaces.Box(-1.0, 1.0, (3,), np.float32)


@pytest.mark.parametrize(
    ("observation_space", "action_space", "named"),
    [
        (BOX, spaces.MultiDiscrete([2, 3]), "MultiDiscrete"),
        (BOX, spaces.MultiBinary(2), "MultiBinary"),
        (spaces.Discrete(4), spaces.Discrete(2), "Discrete observation"),
    ],
)
def test_unmeasurable_spaces_get_a_one_line_error(observation_space, action_space, named):
    model = PPO(
        "MlpPolicy",
        _SpacesEnv(observation_space, action_space),
        n_steps=8,
        batch_size=8,
        policy_kwargs={"net_arch": [8]},
        device="cpu",
        seed=0,
    )
    with pytest.raises(TypeError) as error:
        model.learn(8, callback=GradientDiagnosticsCallback(batch=4, reference_batch=8))
    message = str(error.value)
    assert "\n" not in message and named in message
    assert "Box" in message  # what is supported
    assert model.num_timesteps == 0  # raised at _init_callback, before any rollout


def test_log_prob_matches_sb3_action_log_prob():
    model = _sac()
    actor = model.actor
    torch.manual_seed(0)
    obs = torch.randn(64, 3) * 2
    with torch.no_grad():
        actions, sb3_log_prob = actor.action_log_prob(obs)
        u = actor.action_dist.gaussian_actions  # SB3's own noise draw, pre-tanh
        mean, log_std, _ = actor.get_action_dist_params(obs)
    np.testing.assert_allclose(actions.numpy(), torch.tanh(u).numpy(), rtol=1e-6)
    # The callback's density is SB3's, ε included.
    ours = sb3_squashed_log_prob(mean, log_std, u, actor.action_dist.epsilon)
    np.testing.assert_allclose(ours.numpy(), sb3_log_prob.numpy(), rtol=1e-6, atol=1e-6)
    # rlgrad's TanhGaussian is the same density without SB3's ε inside log(1 − a² + ε): equal
    # where the actions are moderate, and off by exactly Σ_j log(1 + ε/(1 − a_j²)) elsewhere.
    tanh_gaussian = TanhGaussian.from_log_std(mean, log_std).log_prob_pre_tanh(u)
    a = torch.tanh(u.double())
    predicted = torch.log1p(actor.action_dist.epsilon / (1 - a**2)).sum(-1)  # rlgrad − SB3
    moderate = predicted < 1e-5  # |a_j| below ~0.95
    assert moderate.sum() > 32
    np.testing.assert_allclose(
        tanh_gaussian[moderate].numpy(), sb3_log_prob[moderate].numpy(), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        (tanh_gaussian - sb3_log_prob).double().numpy(), predicted.numpy(), atol=1e-5
    )


def _snapshot(model) -> dict:
    optimizers = [
        o.state_dict()
        for o in (
            getattr(model.policy, "optimizer", None),
            getattr(getattr(model, "actor", None), "optimizer", None),
            getattr(getattr(model, "critic", None), "optimizer", None),
            getattr(model, "ent_coef_optimizer", None),
        )
        if o is not None
    ]
    return {
        "params": copy.deepcopy(model.policy.state_dict()),
        "grads": [None if p.grad is None else p.grad.clone() for p in model.policy.parameters()],
        "optimizers": copy.deepcopy(optimizers),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
    }


def _assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


def test_measurement_changes_nothing_training_uses(trained_sac):
    model, _, _ = trained_sac
    ppo = _ppo()
    ppo.learn(128)  # a full rollout buffer with advantages, and one round of updates
    for m in (model, ppo):
        callback = GradientDiagnosticsCallback(batch=32, reference_batch=64)
        callback.init_callback(m)
        before = _snapshot(m)
        first = callback.measure()
        _assert_same(before, _snapshot(m))
        assert callback.measure() != first  # fresh draws each time, from its own generators


def test_training_is_identical_with_and_without_the_callback():
    def final_params(with_callback: bool) -> dict:
        model = SAC(
            "MlpPolicy",
            "Pendulum-v1",
            policy_kwargs={"net_arch": [16]},
            learning_starts=50,
            batch_size=32,
            device="cpu",
            seed=4,
        )
        callback = GradientDiagnosticsCallback(interval=25, batch=32, reference_batch=64)
        model.learn(150, callback=callback if with_callback else None)
        assert callback.n_measurements == (6 if with_callback else 0)
        return model.policy.state_dict()

    _assert_same(final_params(True), final_params(False))
