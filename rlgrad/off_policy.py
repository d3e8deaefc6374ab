"""What the replay-buffer agents (SAC, discrete SAC) share: when their updates are due, and the
Polyak average of their target critics.

An agent using :func:`replay_updates` has ``cfg`` with ``learning_starts``, ``train_freq``,
``gradient_steps``, ``batch_size``, ``target_update_interval`` and ``tau``, and the attributes
``vector_steps``, ``n_envs``, ``learner``, ``buffer`` and ``update_once(batch)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rlgrad.torch_private import foreach_lerp_


def replay_updates(agent: Any, global_step: int) -> dict[str, torch.Tensor]:
    """Count one vector step; once past ``learning_starts``, every ``train_freq`` vector steps
    run ``gradient_steps`` updates (−1: one per env step since the last), each on a fresh
    replay batch of ``batch_size``. Returns the last update's metrics ({} when none ran)."""
    agent.vector_steps += 1
    cfg = agent.cfg
    if global_step <= cfg.learning_starts or agent.vector_steps % cfg.train_freq:
        return {}
    n_updates = cfg.gradient_steps
    if n_updates == -1:
        n_updates = cfg.train_freq * agent.n_envs
    metrics: dict[str, torch.Tensor] = {}
    for _ in range(n_updates):
        agent.learner.mark_step()
        metrics = agent.update_once(agent.buffer.sample(cfg.batch_size))
    return metrics


def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """θ̄ ← θ̄ + τ (θ − θ̄) for every parameter of ``target`` and its twin in ``online``."""
    foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)
