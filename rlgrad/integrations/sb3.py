"""rlgrad's gradient-variance diagnostics for Stable-Baselines3 models, as an SB3 callback.

    from stable_baselines3 import SAC
    from rlgrad.integrations.sb3 import GradientDiagnosticsCallback

    model = SAC("MlpPolicy", "Pendulum-v1")
    model.learn(20_000, callback=GradientDiagnosticsCallback(interval=1000))

Every ``interval`` environment steps the callback measures per-sample policy gradients
(``torch.func``: ``vmap(grad(·))`` over ``functional_call``, no Python loop over samples) and
records their statistics (docs/estimators.md §4, :func:`rlgrad.diagnostics.gradient_statistics`)
through SB3's logger, ``self.logger.record(key, value)``, so they reach whatever outputs the
model logs to (stdout, CSV, JSON, TensorBoard, W&B through its SB3 integration). Keys are
rlgrad's: ``grad/<estimator>/<statistic>`` with statistic one of ``grad_norm``, ``variance``
(tr Σ̂ of one sample's estimate), ``batch_variance`` (tr Σ̂ / B), ``snr``, ``noise_scale``
(+inf when ‖G‖² comes out ≤ 0) and ``cosine_reference`` (cosine of the batch mean to a gradient
from ``reference_batch`` samples with the same estimator); with ``per_layer``,
``grad/<estimator>/<parameter>/snr`` and ``/variance`` as well (kept out of the stdout and
``log`` text outputs, whose 36-character key truncation would make them collide). SB3 keeps
the last value recorded for a key until its next dump (PPO: every ``log_interval``
iterations; SAC: every ``log_interval`` episodes), so each dump carries the latest
measurement. ``time/grad_diagnostics_s`` records what the last measurement cost.

**SAC** (also any off-policy model with SB3's SAC ``Actor``: ``get_action_dist_params`` and a
``SquashedDiagGaussianDistribution``, a ``critic`` returning a tuple of Q tensors, and
``log_ent_coef`` or ``ent_coef_tensor``). Measured in ``_on_step`` once the replay buffer holds
``batch`` transitions, on states drawn from ``model.replay_buffer``, with α = exp(log α) and the
critic's weights fixed: the actor objective of SB3's ``SAC.train``,

    J(θ) = E_s E_{a~πθ(·|s)}[α log πθ(a|s) − min_i Q_i(s, a)],

* ``grad/pathwise/…``: one estimate per (state, ε) pair, a = tanh(μθ(s) + σθ(s) ε). The
  critic enters through one batched ∂Q/∂a at the sampled actions; the per-sample loss uses
  −(∂Q/∂a)_i · a_i(θ), whose θ-gradient equals that of −Q(s_i, a_i(θ)) (``agents/sac.py``'s
  trick), so only the actor is vmapped;
* ``grad/score/…``: one estimate per state, from K = ``score_samples`` actions drawn without
  gradient, mean_k[(h_k − b_k + α) ∇θ log πθ(a_k|s)], h = α log π − min Q and b_k the
  leave-one-out mean of h over the other K − 1 actions (unbiased for ∇θ J, as rlgrad's
  ``actor_estimator=score``);
* ``grad/cosine_score_pathwise`` (cosine of the two batch means, same states) and
  ``grad/variance_ratio_score_over_pathwise`` (ratio of their per-sample variances; the units
  differ: a score-function sample already averages K actions).

log π is SB3's own density, computed from ``actor.get_action_dist_params(obs)`` with the noise
drawn outside the vmapped function: Σ_j [log N(u_j; μ_j, σ_j) − log(1 − tanh²(u_j) + ε)],
ε = ``actor.action_dist.epsilon`` (1e-6). SB3 adds that ε inside the log, so the gradients are
those of the loss SB3 trains on. rlgrad's ``TanhGaussian`` is the same density without ε
(``log(1 − tanh² u)`` in its stable form); the two differ by Σ_j log(1 + ε/(1 − a_j²)) ≤
Σ_j ε/(1 − a_j²), i.e. ~1e-6 for moderate actions but noticeably once |a_j| → 1 (there SB3's
correction saturates at log ε and its gradient vanishes), which is why the SB3 form is used.

**PPO / A2C** (any ``OnPolicyAlgorithm`` with a ``RolloutBuffer``), with a ``Box`` action space
(SB3's ``DiagGaussianDistribution``) or a ``Discrete`` one (its ``CategoricalDistribution``:
discrete PPO and A2C, e.g. on ``CartPole-v1``). Measured in ``_on_rollout_end``, after SB3's
``collect_rollouts`` has run ``compute_returns_and_advantage`` and before ``train()`` changes the
policy, so at the rollout's own policy (PPO's ratio is 1): per-sample gradients of PPO's
policy-gradient term −A_t ∇θ log πθ(a_t|s_t), through ``model.policy.evaluate_actions`` inside
``functional_call``, on ``batch`` time steps drawn without replacement from the rollout; with
``model.normalize_advantage`` the advantages are normalised over those steps, (A − mean)/(std +
1e-8), as ``PPO.train`` does over a minibatch. The actions go in as ``train()`` passes them: the
buffer's (n, action_dim) rows as float32, and for ``Discrete`` flattened to (n,) integer indices
(the buffer keeps them as an (n, 1) column; ``Categorical.log_prob`` of a column would broadcast to
(n, n)). torch.distributions' argument and support checks are left as the process has them (on by
default; ``torch._dynamo`` turns them off process-wide once anything is compiled): they test
through ``torch._is_all_true``, which ``vmap`` evaluates over the whole batch, so with them on an
invalid action raises torch's ``ValueError``. The unit of a sample is one time step, and steps of
one episode are correlated, hence the keys ``grad/score/<stat>_per_step`` (the names REINFORCE and
PPO log). The reference uses ``reference_batch`` steps of the same rollout (all of them when it has
fewer). Only the parameters that log π depends on are differentiated (the value head is left out).
Clipping, the entropy bonus and the value loss are not part of it.

Not measured (``_init_callback`` raises a one-line ``TypeError`` naming what is supported):
``MultiDiscrete``, ``MultiBinary`` and ``Dict`` action spaces; ``Dict`` observations; and
``Discrete``/``MultiDiscrete`` observations, which SB3 one-hot encodes with ``F.one_hot``, whose
range check calls ``.item()`` and cannot run under ``vmap``.

Side effects: none on training. The model's parameters, their ``.grad``, the optimisers and
the distribution objects are left as they were, and the draws (replay indices, ε, actions,
rollout steps) come from the callback's own generators (seeded from ``seed``, default the
model's seed), with numpy's and torch's global RNG states restored afterwards, so a seeded run
trains identically with and without the callback.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from rlgrad import diagnostics
from rlgrad.estimators import (
    ActionObjective,
    Pathwise,
    PolicyGradientEstimator,
    ScoreFunction,
    SquashedGaussianPolicy,
)

__all__ = ["GradientDiagnosticsCallback", "sb3_squashed_log_prob"]

# The action spaces of on-policy models whose log π the callback measures: SB3's
# DiagGaussianDistribution for Box, its CategoricalDistribution for Discrete.
_ON_POLICY_ACTION_SPACES = (spaces.Box, spaces.Discrete)
# Observation spaces SB3's preprocess_obs one-hot encodes (F.one_hot calls .item(): no vmap).
_ONE_HOT_OBSERVATION_SPACES = (spaces.Discrete, spaces.MultiDiscrete)

# Per-layer keys are long and differ only after SB3's 36-character truncation of text outputs.
_TEXT_OUTPUTS = ("stdout", "log")


def sb3_squashed_log_prob(mean: Tensor, log_std: Tensor, u: Tensor, epsilon: float) -> Tensor:
    """SB3's ``SquashedDiagGaussianDistribution.log_prob(tanh(u), u)``, summed over the last dim.

    Σ_j [log N(u_j; μ_j, exp(log σ_j)) − log(1 − tanh²(u_j) + ε)]; broadcasts over leading
    dimensions (SB3's own sums over dim 1 and cannot), and has no in-place ops. It is the
    density of :class:`rlgrad.estimators.SquashedGaussianPolicy` with ``epsilon``.
    """
    return SquashedGaussianPolicy(mean, log_std, epsilon=epsilon).log_prob_pre_tanh(u)


class _Method(nn.Module):
    """``forward`` calls ``module.<method>``: lets ``functional_call`` run any method."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.module, self.method)(*args, **kwargs)


def _per_sample_grads(
    module: nn.Module,
    method: str,
    names: list[str],
    loss: Callable[..., Tensor],
    *batch: Tensor,
) -> dict[str, Tensor]:
    """∇ of ``loss(call, *sample_i)`` w.r.t. the parameters ``names``, for every row i.

    ``call(*args)`` runs ``module.<method>(*args)`` with the parameters substituted; each
    sample tensor keeps a leading dim of 1. Returns {name: (B, *shape)} (torch.func: vmap of
    grad over functional_call; the other parameters and the buffers are constants).
    """
    wrapper = _Method(module, method)
    named = dict(module.named_parameters())
    diff = {f"module.{n}": named[n].detach() for n in names}
    const = {f"module.{n}": p.detach() for n, p in named.items() if n not in names}

    def loss_of(params: dict[str, Tensor], *sample: Tensor) -> Tensor:
        def call(*args: Any, **kwargs: Any) -> Any:
            return functional_call(wrapper, (params, const), args, kwargs)

        return loss(call, *(s.unsqueeze(0) for s in sample))

    grads = vmap(grad(loss_of), in_dims=(None, *([0] * len(batch))))(diff, *batch)
    return {n: grads[f"module.{n}"] for n in names}


def _flat_grad(loss: Tensor, params: list[Tensor], retain_graph: bool = False) -> Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain_graph)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).flatten()
            for g, p in zip(grads, params, strict=True)
        ]
    )


@contextmanager
def _numpy_global_rng(state: Any) -> Iterator[dict]:
    """Run with numpy's legacy global RNG set to ``state``; yield the state it ends in, then
    restore the caller's global state (SB3's buffers draw from ``np.random``)."""
    saved = np.random.get_state()
    np.random.set_state(state)
    holder: dict = {}
    try:
        yield holder
    finally:
        holder["state"] = np.random.get_state()
        np.random.set_state(saved)


@contextmanager
def _attributes_preserved(obj: object) -> Iterator[None]:
    """Restore ``obj``'s instance attributes afterwards (SB3's distribution objects keep the
    last distribution they built; inside vmap that would hold batched tensors)."""
    saved = dict(vars(obj))
    try:
        yield
    finally:
        vars(obj).clear()
        vars(obj).update(saved)


class GradientDiagnosticsCallback(BaseCallback):
    """Log rlgrad's gradient diagnostics of an SB3 PPO/A2C or SAC model (see module doc).

    Args:
        interval: environment steps between two measurements (PPO: checked at each
            rollout's end, so at most one per rollout).
        batch: samples per measurement (SAC: states from the replay buffer; PPO: time steps of
            the rollout, at most all of them).
        reference_batch: samples for the reference gradient of ``cosine_reference``.
        per_layer: also log ``snr`` and ``variance`` per parameter tensor.
        score_samples: K, actions per state of SAC's score-function estimate (≥ 2).
        seed: seed of the callback's own random draws; None takes ``model.seed`` (or 0).
        verbose: SB3's verbosity.

    After a measurement ``last_metrics`` holds the recorded values; :meth:`measure` can also be
    called directly (after ``init_callback(model)``) and returns them without recording.
    """

    def __init__(
        self,
        interval: int = 1000,
        batch: int = 256,
        reference_batch: int = 2048,
        per_layer: bool = False,
        score_samples: int = 8,
        seed: int | None = None,
        verbose: int = 0,
    ):
        super().__init__(verbose)
        if interval < 1:
            raise ValueError(f"interval must be a positive number of env steps, got {interval}")
        if batch < 2 or reference_batch < 2:
            raise ValueError("batch and reference_batch must be at least 2")
        if score_samples < 2:
            raise ValueError("score_samples must be at least 2 (leave-one-out baseline)")
        self.interval = interval
        self.batch = batch
        self.reference_batch = reference_batch
        self.per_layer = per_layer
        self.score_samples = score_samples
        # The actor-gradient estimators measured on SAC models (rlgrad.estimators).
        self.estimators: dict[str, PolicyGradientEstimator] = {
            "pathwise": Pathwise(),
            "score": ScoreFunction(score_samples, "loo"),
        }
        self.seed = seed
        self.last_metrics: dict[str, float] = {}
        self.last_seconds = math.nan
        self.n_measurements = 0
        self._kind = ""
        self._next_step = interval

    # ---- SB3 hooks ----------------------------------------------------------------------
    def _init_callback(self) -> None:
        model = self.model
        self._check_observation_space(model.observation_space)
        if isinstance(model, OnPolicyAlgorithm):
            if not isinstance(model.action_space, _ON_POLICY_ACTION_SPACES):
                raise TypeError(
                    "GradientDiagnosticsCallback measures PPO/A2C with Box (Gaussian) or Discrete "
                    f"(categorical) action spaces, not {type(model.action_space).__name__}"
                )
            if type(model.rollout_buffer) is not RolloutBuffer:
                raise NotImplementedError(
                    "GradientDiagnosticsCallback supports on-policy models with a plain "
                    f"RolloutBuffer, not {type(model.rollout_buffer).__name__} (dict observations)"
                )
            self._kind = "on_policy"
        elif self._is_sac(model):
            if getattr(model.actor, "use_sde", False):
                raise NotImplementedError("GradientDiagnosticsCallback: SAC with gSDE (use_sde)")
            self._kind = "sac"
        else:
            raise TypeError(
                "GradientDiagnosticsCallback supports SB3 on-policy models (PPO, A2C) and SAC, "
                f"not {type(model).__name__}"
            )
        seed = self.seed if self.seed is not None else (model.seed or 0)
        self._generator = torch.Generator(device=model.device).manual_seed(seed)
        self._rng = np.random.default_rng(seed)
        self._np_state = np.random.RandomState(seed % 2**32).get_state()
        self._next_step = self.interval

    @staticmethod
    def _check_observation_space(space: spaces.Space) -> None:
        if isinstance(space, spaces.Dict):
            raise TypeError("GradientDiagnosticsCallback does not measure Dict observation spaces")
        if isinstance(space, _ONE_HOT_OBSERVATION_SPACES):
            raise TypeError(
                f"GradientDiagnosticsCallback does not measure {type(space).__name__} "
                "observation spaces (SB3's one-hot encoding cannot run under torch.func.vmap); "
                "Box and MultiBinary observations are supported"
            )

    @staticmethod
    def _is_sac(model: Any) -> bool:
        actor = getattr(model, "actor", None)
        return (
            actor is not None
            and hasattr(actor, "get_action_dist_params")
            and isinstance(getattr(actor, "action_dist", None), SquashedDiagGaussianDistribution)
            and getattr(model, "critic", None) is not None
            and getattr(model, "replay_buffer", None) is not None
            and (
                getattr(model, "log_ent_coef", None) is not None
                or getattr(model, "ent_coef_tensor", None) is not None
            )
        )

    def _on_step(self) -> bool:
        if self._kind == "sac" and self.num_timesteps >= self._next_step:
            buffer = self.model.replay_buffer
            if buffer.size() * buffer.n_envs >= self.batch:
                self._measure_and_record()
        return True

    def _on_rollout_end(self) -> None:
        if self._kind == "on_policy" and self.num_timesteps >= self._next_step:
            self._measure_and_record()

    def _measure_and_record(self) -> None:
        metrics = self.measure()
        for key, value in metrics.items():
            per_layer = key.count("/") > 2
            self.logger.record(key, value, exclude=_TEXT_OUTPUTS if per_layer else None)
        self.logger.record("time/grad_diagnostics_s", self.last_seconds)
        self._next_step = (self.num_timesteps // self.interval + 1) * self.interval

    # ---- measuring ----------------------------------------------------------------------
    def measure(self) -> dict[str, float]:
        """One measurement now, as {key: value}; changes nothing the model trains with."""
        if not self._kind:
            raise RuntimeError("call init_callback(model) (or pass the callback to learn) first")
        start = time.perf_counter()
        device = self.model.device
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.enable_grad():
            if self._kind == "sac":
                metrics = self._measure_sac()
            else:
                with _attributes_preserved(self.model.policy.action_dist):
                    metrics = self._measure_on_policy()
        self.last_metrics = {k: float(v) for k, v in metrics.items()}
        self.last_seconds = time.perf_counter() - start
        self.n_measurements += 1
        return dict(self.last_metrics)

    def _statistics(
        self, name: str, grads: dict[str, Tensor], reference: Tensor, suffix: str = ""
    ) -> tuple[dict[str, Tensor], Tensor]:
        """``grad/<name>/<stat><suffix>`` statistics of the per-sample rows (the names rlgrad's
        agents log), and their mean (P,)."""
        flat = diagnostics.flatten(grads)
        stats = diagnostics.gradient_statistics(flat, reference)
        out = diagnostics.prefixed(f"grad/{name}", stats, suffix)
        if self.per_layer:
            layers = diagnostics.per_layer_statistics(grads)
            out.update(diagnostics.prefixed(f"grad/{name}", layers, suffix))
        # The mean in float32 (B rows), then float64: .double() of the (B, P) matrix first
        # would allocate B·P·8 bytes for nothing.
        return out, flat.mean(0).double()

    # ---- SAC ----------------------------------------------------------------------------
    def _replay_obs(self, n: int) -> Tensor:
        model = self.model
        with _numpy_global_rng(self._np_state) as end:
            obs = model.replay_buffer.sample(n, env=model._vec_normalize_env).observations
        self._np_state = end["state"]
        if not isinstance(obs, Tensor):
            raise NotImplementedError("GradientDiagnosticsCallback: dict observations")
        return obs

    def _alpha(self) -> Tensor:
        model = self.model
        if getattr(model, "log_ent_coef", None) is not None:
            return model.log_ent_coef.detach().exp().reshape(())
        return model.ent_coef_tensor.detach().reshape(())

    def _min_q(self, obs: Tensor, actions: Tensor) -> Tensor:
        """min_i Q_i(s, a) for actions (B, d) or (K, B, d); gradients flow to the actions only
        (``torch.autograd.grad`` with respect to them: nothing accumulates in the critic)."""
        lead = actions.shape[:-1]
        obs = obs.expand(*lead, obs.shape[-1]).reshape(-1, obs.shape[-1])
        q = torch.cat(self.model.critic(obs, actions.reshape(-1, actions.shape[-1])), dim=1)
        return q.min(dim=1).values.view(lead)

    def _policy(
        self, obs: Tensor, call: Callable[..., Any] | None = None
    ) -> SquashedGaussianPolicy:
        """π(·|s) as SB3's actor computes it, with SB3's ε inside log(1 − tanh² u + ε)."""
        actor = self.model.actor
        mean, log_std, _ = (call or actor.get_action_dist_params)(obs)
        return SquashedGaussianPolicy(mean, log_std, epsilon=float(actor.action_dist.epsilon))

    def _objective(self, obs: Tensor, alpha: Tensor) -> ActionObjective:
        """h(s, a) = α log π(a|s) − min_i Q_i(s, a): SB3's ``SAC.train`` actor objective."""
        return ActionObjective(lambda actions: -self._min_q(obs, actions), alpha, obs)

    def _draw(self, estimator: PolicyGradientEstimator, policy: SquashedGaussianPolicy) -> Tensor:
        """The estimator's noise, from the callback's own generator."""
        return estimator.draw(policy, generator=self._generator)

    def sac_per_sample(self, name: str, obs: Tensor, alpha: Tensor) -> dict[str, Tensor]:
        """Per state, ∇θ of estimator ``name``'s row loss (``rlgrad.estimators``) on SB3's actor:
        the same objects, draws and surrogates as rlgrad's SAC diagnostics."""
        actor = self.model.actor
        estimator = self.estimators[name]
        with torch.no_grad():
            policy = self._policy(obs)
            noise = self._draw(estimator, policy)
            prepared = estimator.prepare(policy, noise, self._objective(obs, alpha))
        inputs, row_loss = estimator.per_state(noise, prepared, alpha)

        def loss(call, obs_i, *inputs_i):
            return row_loss(self._policy(obs_i, call), *inputs_i)

        names = [n for n, p in actor.named_parameters() if p.requires_grad]
        return _per_sample_grads(actor, "get_action_dist_params", names, loss, obs, *inputs)

    def _measure_sac(self) -> dict[str, Tensor]:
        actor = self.model.actor
        params = [p for p in actor.parameters() if p.requires_grad]
        alpha = self._alpha()
        obs = self._replay_obs(self.batch)
        ref_obs = self._replay_obs(self.reference_batch)
        per_sample = {name: self.sac_per_sample(name, obs, alpha) for name in self.estimators}

        # References: the same estimators as batch gradients on reference_batch states.
        reference = {}
        objective = self._objective(ref_obs, alpha)
        for name, estimator in self.estimators.items():
            policy = self._policy(ref_obs)
            loss, _ = estimator.loss(policy, self._draw(estimator, policy), objective)
            reference[name] = _flat_grad(loss, params)

        metrics: dict[str, Tensor] = {}
        means: dict[str, Tensor] = {}
        for name, grads in per_sample.items():
            stats, means[name] = self._statistics(name, grads, reference[name])
            metrics.update(stats)
        metrics["grad/cosine_score_pathwise"] = diagnostics.cosine(
            means["score"], means["pathwise"]
        )
        metrics["grad/variance_ratio_score_over_pathwise"] = (
            metrics["grad/score/variance"] / metrics["grad/pathwise/variance"]
        )
        return metrics

    # ---- PPO / A2C ----------------------------------------------------------------------
    def _rollout_tensors(self, idx: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """Observations, actions (as ``train()`` passes them) and advantages at flat indices."""
        model = self.model
        buf = model.rollout_buffer
        n = buf.buffer_size * buf.n_envs
        obs = buf.observations.reshape(n, *buf.obs_shape)[idx]
        # float32, as RolloutBuffer._get_samples hands them to train() (the buffer keeps the
        # action space's dtype, int64 for Discrete, in recent SB3 versions; float32 in older).
        actions = buf.actions.reshape(n, buf.action_dim)[idx].astype(np.float32, copy=False)
        advantages = buf.advantages.reshape(n)[idx]
        device = model.device
        obs_t = torch.as_tensor(obs, device=device)
        actions_t = self._train_actions(torch.as_tensor(actions, device=device))
        adv_t = torch.as_tensor(advantages, device=device, dtype=torch.float32)
        if getattr(model, "normalize_advantage", False) and len(adv_t) > 1:
            adv_t = (adv_t - adv_t.mean()) / (adv_t.std() + 1e-8)
        return obs_t, actions_t, adv_t

    def _train_actions(self, actions: Tensor) -> Tensor:
        """Actions in the form ``PPO.train``/``A2C.train`` pass to ``evaluate_actions``: for a
        Discrete space the (n, 1) float column becomes (n,) int64 indices (Categorical.log_prob
        of the column would broadcast against the batch to (n, n)); others are unchanged."""
        if isinstance(self.model.action_space, spaces.Discrete):
            return actions.long().reshape(-1)
        return actions

    def _draw_steps(self, n_total: int, n: int) -> np.ndarray:
        if n >= n_total:
            return np.arange(n_total)
        return np.sort(self._rng.choice(n_total, size=n, replace=False))

    def policy_gradient_per_step(
        self, obs: Tensor, actions: Tensor, advantages: Tensor, names: list[str] | None = None
    ) -> dict[str, Tensor]:
        """Per time step t: ∇θ [−A_t log πθ(a_t|s_t)] (PPO's policy term at ratio 1).

        ``advantages`` are used as given (normalise them first, as :meth:`_rollout_tensors`
        does); ``names``: the parameters to differentiate, default those log π depends on.
        ``actions``: (n, action_dim) rows; for a Discrete space also (n,) indices, either dtype.
        """
        policy = self.model.policy
        actions = self._train_actions(actions)
        if names is None:
            names = self._log_prob_parameters(obs[:2], actions[:2])

        def loss(call, obs_i, action_i, adv_i):
            _, log_prob_i, _ = call(obs_i, action_i)
            return -(adv_i * log_prob_i).sum()

        with _attributes_preserved(policy.action_dist):
            return _per_sample_grads(
                policy, "evaluate_actions", names, loss, obs, actions, advantages
            )

    def _log_prob_parameters(self, obs: Tensor, actions: Tensor) -> list[str]:
        """Names of the policy's trainable parameters that log π(a|s) depends on."""
        policy = self.model.policy
        named = [(n, p) for n, p in policy.named_parameters() if p.requires_grad]
        with _attributes_preserved(policy.action_dist):
            _, log_prob, _ = policy.evaluate_actions(obs, actions)
        grads = torch.autograd.grad(log_prob.sum(), [p for _, p in named], allow_unused=True)
        return [n for (n, _), g in zip(named, grads, strict=True) if g is not None]

    def _measure_on_policy(self) -> dict[str, Tensor]:
        policy = self.model.policy
        buf = self.model.rollout_buffer
        if not buf.full:
            raise RuntimeError("the rollout buffer is not full: measure at a rollout's end")
        n_total = buf.buffer_size * buf.n_envs
        ref_obs, ref_actions, ref_adv = self._rollout_tensors(
            self._draw_steps(n_total, self.reference_batch)
        )
        names = self._log_prob_parameters(ref_obs[:2], ref_actions[:2])
        params = dict(policy.named_parameters())
        _, log_prob, _ = policy.evaluate_actions(ref_obs, ref_actions)
        reference = _flat_grad(-(ref_adv * log_prob).mean(), [params[n] for n in names])

        obs, actions, advantages = self._rollout_tensors(self._draw_steps(n_total, self.batch))
        per_sample = self.policy_gradient_per_step(obs, actions, advantages, names)
        return self._statistics("score", per_sample, reference, suffix="_per_step")[0]
