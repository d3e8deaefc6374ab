"""On-policy storage and the return / advantage estimators computed over it.

``RolloutBuffer`` holds one rollout: ``n_steps`` vector steps of ``n_envs`` environments, as
preallocated tensors of shape (n_steps, n_envs, ...) on the learner's device (a
:class:`rlgrad.buffers.TransitionTable`, like the replay buffer). It stores what the
runner hands an agent (obs, actions, rewards, true next observations, terminated, truncated) and
nothing agent-specific: log-probabilities and values are recomputed by the agent in one batched
call at update time (the policy has not changed since it acted, so they are the same numbers).

The estimators take (T, N) tensors, time first, and never loop over envs:

* ``next_values[t]`` is V(next_obs[t]), where ``next_obs[t]`` is the observation the env really
  reached: for a step that ended an episode, its final observation (not the next episode's
  first); for the last step of the rollout, the observation the next rollout will start from.
* A **termination** ends the return: nothing is bootstrapped after it.
* A **time-limit truncation** bootstraps from V(final observation): the return continues as
  γ·V(s_final), as if the episode had gone on.
* An episode still running at the **rollout boundary** bootstraps from V(next_obs[T−1]).

``gae`` computes GAE(λ) (Schulman et al. 2016) with those rules:

    δ_t = r_t + γ (1 − term_t) V(s'_t) − V(s_t)
    A_t = δ_t + γ λ (1 − done_t) A_{t+1},      A_T = 0,   done_t = term_t ∨ trunc_t

and returns (A, A + V), the second being the TD(λ) value targets. With λ = 1 and V(s'_t) equal to
V(s_{t+1}) inside an episode, A + V is exactly ``discounted_returns`` with the same bootstrap.

``discounted_returns`` is the Monte Carlo reward-to-go Ĝ_t used by REINFORCE:

    Ĝ_t = r_t + γ (1 − term_t) [ cut_t · B_t + (1 − cut_t) Ĝ_{t+1} ],   cut_t = done_t ∨ (t = T−1)

where B_t = V(s'_t) when ``next_values`` is given (a bootstrap at truncations and at the
rollout boundary), and B_t = 0 otherwise (the return is simply cut there: a truncated episode
counts only the rewards it received). ``complete_episodes`` marks the steps whose episode ends
inside the rollout, for an agent that prefers to drop the unfinished tail instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from rlgrad.buffers import TransitionTable


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(λ) advantages and TD(λ) returns, all (T, N); see the module docstring."""
    not_terminated = (~terminated).to(rewards.dtype)
    continues = (~(terminated | truncated)).to(rewards.dtype)
    deltas = rewards + gamma * not_terminated * next_values - values
    decay = (gamma * lam) * continues
    advantages = torch.empty_like(deltas)
    running = torch.zeros_like(deltas[0])
    for t in range(deltas.shape[0] - 1, -1, -1):
        running = torch.addcmul(deltas[t], decay[t], running)
        advantages[t] = running
    return advantages, advantages + values


def discounted_returns(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    next_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reward-to-go Ĝ_t, (T, N), bootstrapped with ``next_values`` where an episode is cut
    short (truncation, rollout boundary) when they are given, cut at 0 otherwise."""
    not_terminated = (~terminated).to(rewards.dtype)
    cut = (terminated | truncated).to(rewards.dtype)
    cut[-1] = 1.0
    bootstrap = (
        torch.where(cut.bool(), next_values, 0.0)
        if next_values is not None
        else torch.zeros_like(rewards)
    )
    # Ĝ_t = r_t + γ(1 − term_t)(B_t + (1 − cut_t) Ĝ_{t+1}), B_t already zero where not cut.
    carry = gamma * not_terminated
    keep = 1.0 - cut
    returns = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + carry[t] * (bootstrap[t] + keep[t] * running)
        returns[t] = running
    return returns


def complete_episodes(terminated: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """(T, N) bool: True where the step's episode ends (either way) within the rollout."""
    done = (terminated | truncated).to(torch.uint8)  # cummax over bool is not on every device
    return done.flip(0).cummax(0).values.flip(0).bool()


class RolloutBuffer(TransitionTable):
    """One rollout of ``n_steps`` × ``n_envs`` transitions in preallocated device tensors, rows
    (time, env)."""

    KIND = "rollout"

    def __init__(
        self,
        n_steps: int,
        n_envs: int,
        obs_dim: int,
        act_dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if n_steps <= 0 or n_envs <= 0:
            raise ValueError(f"n_steps and n_envs must be positive, got {n_steps}, {n_envs}")
        super().__init__((n_steps, n_envs), obs_dim, act_dim, device, dtype)
        self.n_steps, self.n_envs = n_steps, n_envs
        self.pos = 0

    @property
    def size(self) -> int:
        """Transitions stored (``pos`` vector steps of ``n_envs`` each)."""
        return self.pos * self.n_envs

    @property
    def full(self) -> bool:
        return self.pos == self.n_steps

    def add(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
        truncated: torch.Tensor,
    ) -> None:
        """Store one vector step (leading dim: one row per env)."""
        if self.full:
            raise RuntimeError("rollout buffer is full; call reset() after using it")
        self._write(self.pos, (obs, actions, rewards, next_obs, terminated, truncated))
        self.pos += 1

    def reset(self) -> None:
        self.pos = 0

    def flat(self, name: str) -> torch.Tensor:
        """A stored field with (time, env) flattened into one batch dimension (a view)."""
        store = getattr(self, name)[: self.pos]
        return store.reshape(self.pos * self.n_envs, *store.shape[2:])

    def compute_gae(
        self, values: torch.Tensor, next_values: torch.Tensor, gamma: float, lam: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``gae`` over the stored steps; ``values`` = V(obs) and ``next_values`` = V(next_obs),
        flat or (pos, n_envs). Returns flat advantages and TD(λ) returns."""
        advantages, returns = gae(
            self.rewards[: self.pos],
            self._grid(values),
            self._grid(next_values),
            self.terminated[: self.pos],
            self.truncated[: self.pos],
            gamma,
            lam,
        )
        return advantages.reshape(-1), returns.reshape(-1)

    def compute_returns(
        self, gamma: float, next_values: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``discounted_returns`` over the stored steps, flat; bootstrapped with
        ``next_values`` = V(next_obs) when given."""
        returns = discounted_returns(
            self.rewards[: self.pos],
            self.terminated[: self.pos],
            self.truncated[: self.pos],
            gamma,
            None if next_values is None else self._grid(next_values),
        )
        return returns.reshape(-1)

    def complete_episodes(self) -> torch.Tensor:
        """Flat bool mask of the stored steps whose episode ends within the rollout."""
        return complete_episodes(self.terminated[: self.pos], self.truncated[: self.pos]).reshape(
            -1
        )

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.pos, self.n_envs)

    def minibatches(
        self,
        batch_size: int,
        *tensors: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """One epoch over ``tensors`` (each with the flat batch dimension first) in random
        minibatches of ``batch_size`` (the last may be smaller). The permutation is drawn on
        the device, and slicing it needs no host round trip."""
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            raise ValueError("minibatches: tensors differ in their batch dimension")
        perm = torch.randperm(n, device=tensors[0].device, generator=generator)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            yield tuple(t.index_select(0, idx) for t in tensors)

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        state = self._fields_state(self.pos)
        state["pos"] = self.pos
        return state

    def load_state_dict(self, state: dict) -> None:
        pos = int(state["pos"])
        if pos > self.n_steps:
            raise ValueError(f"checkpoint holds {pos} steps, rollout length is {self.n_steps}")
        self._load_fields(state, pos)
        self.pos = pos
