"""The interface the runner drives; every agent in ``rlgrad.agents`` implements it."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from rlgrad.envs import EnvSpec
from rlgrad.learner import Learner


class Agent(Protocol):
    """An agent acts on batched observations and turns stored experience into losses.

    Tensors passed in and out live on ``learner.device`` and have a leading env dimension.
    Actions are in the agent's space [-1, 1]^d (the env rescales them).
    """

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

    def update(self, global_step: int) -> dict[str, torch.Tensor]:
        """Run the updates that are due; returns the latest metrics as (unsynced) tensors."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
