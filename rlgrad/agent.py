"""The interface the runner drives; every agent in ``rlgrad.agents`` implements it.

The runner never asks which agent it drives: everything it needs, gradient diagnostics
included, is declared here.

Diagnostics. ``updates`` counts the agent's parameter updates (minibatch epochs of one PPO
rollout count as one). With ``diagnostics.interval = N`` the runner measures after the update
that makes ``updates`` cross a multiple of N: it passes ``measure=True`` to :meth:`Agent.update`
when the next update will be measured, so that an agent that must keep something for the
measurement (an on-policy agent's rollout and parameters before the update) keeps it only then,
and it calls :meth:`Agent.diagnose` right after that update.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from rlgrad.config import DiagnosticsConfig
from rlgrad.envs import EnvSpec
from rlgrad.learner import Learner


@runtime_checkable
class Agent(Protocol):
    """An agent acts on batched observations and turns stored experience into losses.

    Tensors passed in and out live on ``learner.device`` and have a leading env dimension.
    Actions are in the agent's space [-1, 1]^d (the env rescales them).
    """

    updates: int
    """Parameter updates made so far (restored from checkpoints)."""

    def __init__(
        self, cfg: Any, spec: EnvSpec, learner: Learner, n_envs: int, total_steps: int
    ) -> None: ...

    def act(self, obs: torch.Tensor, global_step: int) -> torch.Tensor:
        """Exploration actions for the ``n_envs`` observations (``global_step`` steps so far)."""

    def act_deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        """The policy's mode, for evaluation."""

    def observe(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
        truncated: torch.Tensor,
    ) -> None:
        """Store one vector step; ``next_obs`` is the true last observation of ended episodes."""

    def update(self, global_step: int, measure: bool = False) -> dict[str, torch.Tensor]:
        """Run the updates that are due; returns the latest metrics as (unsynced) tensors.

        ``measure``: the next update will be measured by :meth:`diagnose` (see module doc)."""

    def default_diagnostics_interval(self) -> int:
        """Updates between two measurements when ``diagnostics.interval`` is unset (0: never)."""

    def diagnose(self, cfg: DiagnosticsConfig) -> dict[str, torch.Tensor]:
        """Gradient-variance statistics (``grad/...``) of the update just made."""

    def state_dict(self) -> dict[str, Any]: ...

    def policy_state_dict(self) -> dict[str, Any]:
        """The entries of :meth:`state_dict` that acting needs (no buffers, no critics): what
        ``checkpoints/policy.pt`` and ``best.pt`` hold."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def will_measure(updates: int, interval: int) -> bool:
    """Whether update number ``updates + 1`` crosses a multiple of ``interval`` (0: never)."""
    return interval > 0 and (updates + 1) % interval == 0


def diagnostics_interval(agent: Agent, cfg: DiagnosticsConfig) -> int:
    """``cfg.interval``, or the agent's default when it is unset."""
    return cfg.interval if cfg.interval is not None else agent.default_diagnostics_interval()
