"""What REINFORCE and PPO share: a policy, an optional state value, one rollout buffer.

The policy is a diagonal Gaussian for a Box action space and a softmax over the actions for a
Discrete one (:func:`rlgrad.networks.make_policy`); both give ``log_prob`` and ``entropy``, so
the losses and their diagnostics are written once for the two.

:class:`OnPolicyAgent` implements the parts of the :class:`rlgrad.agent.Agent` contract that do
not depend on the loss: acting, storing steps, the update's frame (wait for a full rollout,
anneal the learning rates, take the diagnostics snapshot when asked, reset the buffer, count the
update), the default measurement interval, and the state of the common parts. A subclass
registers its optimisers with :meth:`OnPolicyAgent.add_optimizer` and implements

* ``learn(global_step, measure)``: its maths on the full rollout, returning the metrics; when
  ``measure`` is set it calls :meth:`OnPolicyAgent.snapshot` before its first parameter step;
* ``diagnose_snapshot(snapshot, cfg)``: the ``grad/...`` statistics of the measured update.

Diagnostics. Measuring an update needs the rollout it used and the policy's parameters θ_old
before it (the buffer is reset and θ moves during the update). :meth:`OnPolicyAgent.snapshot`
copies them, and only for an update the runner will measure (``update(..., measure=True)``);
every other update drops the previous snapshot, so :meth:`OnPolicyAgent.diagnose` returns {}
unless the last update was measured.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from rlgrad.config import DiagnosticsConfig
from rlgrad.envs import EnvSpec
from rlgrad.learner import Learner
from rlgrad.networks import GaussianPolicy, SoftmaxPolicy, ValueFunction, make_policy
from rlgrad.rollout import RolloutBuffer

DIAGNOSTICS_STEPS = 2048
"""Env steps between two measurements by default: the first update after each 2048 steps
(every rollout at PPO's default size)."""


class OnPolicyAgent:
    """The common frame of the on-policy agents (see the module docstring).

    ``cfg`` needs ``hidden_sizes``, ``activation``, ``log_std_init``, ``ortho_init``,
    ``n_steps`` and ``anneal_lr``.
    """

    value: ValueFunction | None

    def __init__(
        self,
        cfg: Any,
        spec: EnvSpec,
        learner: Learner,
        n_envs: int,
        total_steps: int = 0,
        value: bool = True,
    ):
        self.cfg, self.learner, self.n_envs = cfg, learner, n_envs
        self.total_steps = total_steps
        device = learner.device
        self.policy: GaussianPolicy | SoftmaxPolicy = make_policy(
            spec, cfg.hidden_sizes, cfg.activation, cfg.log_std_init, cfg.ortho_init
        ).to(device)
        self.value = None
        if value:
            self.value = ValueFunction(
                spec.obs_dim, cfg.hidden_sizes, cfg.activation, cfg.ortho_init
            ).to(device)
        self.buffer = RolloutBuffer(cfg.n_steps, n_envs, spec.obs_dim, spec.act_dim, device)
        self.learning_rates: dict[str, float] = {}
        """Optimiser name → its configured learning rate (what ``anneal_lr`` decays)."""
        self.updates = 0
        self.last_rollout: dict[str, Any] | None = None
        """The snapshot of the last update when it was measured (see :meth:`snapshot`)."""

    def add_optimizer(
        self, name: str, params: Iterable[torch.nn.Parameter], lr: float, **adam_kwargs: Any
    ) -> None:
        """``learner.add_optimizer``, recording ``lr`` for the annealing."""
        self.learner.add_optimizer(name, params, lr, **adam_kwargs)
        self.learning_rates[name] = lr

    # ---- acting -------------------------------------------------------------------------
    def act(self, obs: torch.Tensor, global_step: int) -> torch.Tensor:
        return self.policy.sample_action(obs)

    @torch.no_grad()
    def act_deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy.mean_action(obs)

    def observe(self, obs, actions, rewards, next_obs, terminated, truncated) -> None:
        self.buffer.add(obs, actions, rewards, next_obs, terminated, truncated)

    def policy_metrics(self) -> dict[str, torch.Tensor]:
        """``train/policy_std`` (the mean σ) for a Gaussian policy; nothing for a softmax one
        (its spread is ``train/entropy``)."""
        if isinstance(self.policy, GaussianPolicy):
            return {"train/policy_std": self.policy.log_std.detach().exp().mean()}
        return {}

    # ---- learning -----------------------------------------------------------------------
    def update(self, global_step: int, measure: bool = False) -> dict[str, torch.Tensor]:
        """One update on the rollout once it is full (nothing before)."""
        if not self.buffer.full:
            return {}
        self.anneal_learning_rates(global_step)
        self.last_rollout = None
        metrics = self.learn(global_step, measure)
        self.buffer.reset()
        self.updates += 1
        return metrics

    def learn(self, global_step: int, measure: bool) -> dict[str, torch.Tensor]:
        """The agent's update on the full rollout (see the module docstring)."""
        raise NotImplementedError

    def anneal_learning_rates(self, global_step: int) -> None:
        """With ``anneal_lr``: every learning rate × (1 − steps before this rollout / total), so
        the first update uses the full rate and the last one rate / n_updates (CleanRL)."""
        if not (self.cfg.anneal_lr and self.total_steps > 0):
            return
        frac = max(1.0 - (global_step - self.buffer.size) / self.total_steps, 0.0)
        for name, lr in self.learning_rates.items():
            self.learner.set_lr(name, frac * lr)

    # ---- diagnostics --------------------------------------------------------------------
    def default_diagnostics_interval(self) -> int:
        """The first update after each :data:`DIAGNOSTICS_STEPS` env steps."""
        rollout = self.cfg.n_steps * self.n_envs
        return max(1, math.ceil(DIAGNOSTICS_STEPS / rollout))

    def snapshot(self, **tensors: torch.Tensor | None) -> None:
        """Keep what :meth:`diagnose_snapshot` needs of the rollout the update is about to use: the
        policy's parameters θ_old (``params``), the flat ``obs`` and ``actions``, the (T, N)
        ``rewards``, ``terminated`` and ``truncated``, and the agent's ``tensors`` (which must
        not be modified in place afterwards). Call it before the update's first step."""
        buf = self.buffer
        self.last_rollout = {
            "params": {n: p.detach().clone() for n, p in self.policy.named_parameters()},
            "obs": buf.flat("obs").clone(),
            "actions": buf.flat("actions").clone(),
            "rewards": buf.rewards[: buf.pos].clone(),
            "terminated": buf.terminated[: buf.pos].clone(),
            "truncated": buf.truncated[: buf.pos].clone(),
            **tensors,
        }

    def diagnose(self, cfg: DiagnosticsConfig) -> dict[str, torch.Tensor]:
        """:meth:`diagnose_snapshot` on the snapshot of the last update; {} when that update
        was not measured."""
        if self.last_rollout is None:
            return {}
        return self.diagnose_snapshot(self.last_rollout, cfg)

    def diagnose_snapshot(
        self, snapshot: dict[str, Any], cfg: DiagnosticsConfig
    ) -> dict[str, torch.Tensor]:
        """The ``grad/...`` statistics of the update ``snapshot`` was taken for."""
        raise NotImplementedError

    # ---- state --------------------------------------------------------------------------
    def policy_state_dict(self) -> dict[str, Any]:
        """What acting needs: the policy network (see :class:`rlgrad.agent.Agent`)."""
        return {"policy": self.policy.state_dict()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "value": self.value.state_dict() if self.value is not None else None,
            "buffer": self.buffer.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        if self.value is not None:
            self.value.load_state_dict(state["value"])
        self.buffer.load_state_dict(state["buffer"])
        self.updates = int(state["updates"])
