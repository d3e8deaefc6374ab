"""rlgrad.buffers.ReplayBuffer, and how SAC's critic target treats terminated vs truncated rows."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlgrad.agents.sac import Agent, Config
from rlgrad.buffers import ReplayBuffer, Transitions
from rlgrad.config import LearnerConfig
from rlgrad.envs import EnvSpec
from rlgrad.learner import Learner

OBS_DIM, ACT_DIM = 3, 2


def batch(
    ids: list[int], obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM
) -> dict[str, torch.Tensor]:
    """Transitions whose every field encodes the transition's id, so rows can be traced."""
    t = torch.tensor(ids, dtype=torch.float32)
    return {
        "obs": t[:, None] + torch.arange(obs_dim) / 10,
        "actions": -t[:, None] - torch.arange(act_dim) / 10,
        "rewards": t * 2,
        "next_obs": t[:, None] + 0.5 + torch.arange(obs_dim) / 10,
        "terminated": torch.tensor([i % 3 == 0 for i in ids]),
        "truncated": torch.tensor([i % 5 == 0 for i in ids]),
    }


def stored_ids(buffer: ReplayBuffer) -> list[int]:
    """The ids held in rows 0..capacity-1 (−1 marks a row never written)."""
    return [int(v) if (i < buffer.size) else -1 for i, v in enumerate(buffer.obs[:, 0].tolist())]


def assert_rows_consistent(t: Transitions, ids: torch.Tensor) -> None:
    """Every field of every sampled row belongs to the same transition ``ids``."""
    expected = batch(ids.tolist(), t.obs.shape[1], t.actions.shape[1])
    for name, value in expected.items():
        assert torch.equal(getattr(t, name), value), name


def test_add_batches_of_n_envs_fills_rows_in_order() -> None:
    buffer = ReplayBuffer(10, OBS_DIM, ACT_DIM)
    assert len(buffer) == 0 and buffer.pos == 0
    buffer.obs.fill_(-7.0)  # the storage is uninitialised: mark it to see what gets written
    buffer.add(**batch([0, 1, 2, 3]))
    buffer.add(**batch([4, 5, 6, 7]))
    assert len(buffer) == 8 and buffer.pos == 8
    assert stored_ids(buffer) == [0, 1, 2, 3, 4, 5, 6, 7, -1, -1]
    expected = batch(list(range(8)))
    for name, value in expected.items():
        assert torch.equal(getattr(buffer, name)[:8], value), name
    # Unwritten rows are untouched.
    assert torch.all(buffer.obs[8:] == -7.0)


def test_wraparound_overwrites_the_oldest_rows_in_order() -> None:
    buffer = ReplayBuffer(10, OBS_DIM, ACT_DIM)
    for start in range(0, 16, 4):  # 16 transitions into 10 rows, in batches of 4
        buffer.add(**batch(list(range(start, start + 4))))
    assert len(buffer) == 10
    assert buffer.pos == 6
    # Rows 0..5 hold 10..15 (the newest), rows 6..9 hold 6..9; 0..5 are gone.
    assert stored_ids(buffer) == [10, 11, 12, 13, 14, 15, 6, 7, 8, 9]
    order = [10, 11, 12, 13, 14, 15, 6, 7, 8, 9]
    expected = batch(order)
    for name, value in expected.items():
        assert torch.equal(getattr(buffer, name), value), name


def test_adding_more_than_capacity_at_once_is_refused() -> None:
    buffer = ReplayBuffer(3, OBS_DIM, ACT_DIM)
    with pytest.raises(ValueError, match="capacity 3"):
        buffer.add(**batch([0, 1, 2, 3]))
    assert len(buffer) == 0


def test_nonpositive_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        ReplayBuffer(0, OBS_DIM, ACT_DIM)


def test_sample_from_empty_buffer_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(4, OBS_DIM, ACT_DIM).sample(2)


@settings(max_examples=40, deadline=None)
@given(
    capacity=st.integers(1, 40),
    n_envs=st.integers(1, 8),
    n_adds=st.integers(1, 12),
    batch_size=st.integers(1, 64),
    seed=st.integers(0, 2**31),
)
def test_ring_matches_a_reference_and_samples_stored_rows(
    capacity: int, n_envs: int, n_adds: int, batch_size: int, seed: int
) -> None:
    n_envs = min(n_envs, capacity)
    buffer = ReplayBuffer(capacity, OBS_DIM, ACT_DIM)
    reference: list[int] = [-1] * capacity  # a plain Python ring
    pos, next_id = 0, 1
    for _ in range(n_adds):
        ids = list(range(next_id, next_id + n_envs))
        next_id += n_envs
        buffer.add(**batch(ids))
        for i in ids:
            reference[pos] = i
            pos = (pos + 1) % capacity
    written = next_id - 1
    assert len(buffer) == min(written, capacity)
    assert buffer.pos == written % capacity
    assert stored_ids(buffer) == reference
    # The buffer holds exactly the newest min(written, capacity) transitions.
    assert sorted(i for i in reference if i >= 0) == list(
        range(max(1, written - capacity + 1), written + 1)
    )

    sample = buffer.sample(batch_size, torch.Generator().manual_seed(seed))
    assert sample.obs.shape == (batch_size, OBS_DIM)
    assert sample.actions.shape == (batch_size, ACT_DIM)
    for field in (sample.rewards, sample.terminated, sample.truncated):
        assert field.shape == (batch_size,)
    sampled = sample.obs[:, 0].long()
    live = {i for i in reference if i >= 0}
    assert set(sampled.tolist()) <= live
    assert_rows_consistent(sample, sampled)


def test_seeded_sampling_is_reproducible() -> None:
    buffer = ReplayBuffer(100, OBS_DIM, ACT_DIM)
    for start in range(0, 60, 6):
        buffer.add(**batch(list(range(start, start + 6))))
    first = buffer.sample(32, torch.Generator().manual_seed(7))
    second = buffer.sample(32, torch.Generator().manual_seed(7))
    other = buffer.sample(32, torch.Generator().manual_seed(8))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first.obs, other.obs)
    # Sampling is with replacement over the 60 stored rows only.
    assert first.obs[:, 0].max() < 60


def test_sampling_without_generator_follows_torch_seed() -> None:
    buffer = ReplayBuffer(50, OBS_DIM, ACT_DIM)
    buffer.add(**batch(list(range(50))))
    torch.manual_seed(3)
    a = buffer.sample(16)
    torch.manual_seed(3)
    b = buffer.sample(16)
    assert torch.equal(a.obs, b.obs)


def test_done_flags_are_stored_and_sampled_as_bool() -> None:
    buffer = ReplayBuffer(4, OBS_DIM, ACT_DIM)
    assert buffer.terminated.dtype == torch.bool and buffer.truncated.dtype == torch.bool
    fields = batch([0, 1])
    fields["terminated"] = torch.tensor([1.0, 0.0])  # floats from an env are cast to bool
    fields["truncated"] = torch.tensor([0, 1], dtype=torch.uint8)
    buffer.add(**fields)
    assert buffer.terminated[:2].tolist() == [True, False]
    assert buffer.truncated[:2].tolist() == [False, True]
    sample = buffer.sample(8, torch.Generator().manual_seed(0))
    assert sample.terminated.dtype == torch.bool and sample.truncated.dtype == torch.bool
    assert sample.rewards.dtype == torch.float32 and sample.obs.dtype == torch.float32


def test_state_dict_round_trip_after_wraparound() -> None:
    source = ReplayBuffer(7, OBS_DIM, ACT_DIM)
    for start in range(0, 9, 3):
        source.add(**batch(list(range(start, start + 3))))
    state = source.state_dict()
    assert state["size"] == 7 and state["pos"] == 2
    assert stored_ids(source) == [7, 8, 2, 3, 4, 5, 6]

    target = ReplayBuffer(7, OBS_DIM, ACT_DIM)
    target.load_state_dict(state)
    assert (len(target), target.pos) == (len(source), source.pos)
    for name in ("obs", "actions", "rewards", "next_obs", "terminated", "truncated"):
        assert torch.equal(getattr(target, name), getattr(source, name)), name
    a = source.sample(20, torch.Generator().manual_seed(1))
    b = target.sample(20, torch.Generator().manual_seed(1))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    # Both continue identically: the next add overwrites the same (oldest) rows.
    source.add(**batch([100, 101]))
    target.add(**batch([100, 101]))
    assert stored_ids(target) == stored_ids(source) == [7, 8, 100, 101, 4, 5, 6]


def test_state_dict_of_partly_filled_buffer_holds_only_stored_rows() -> None:
    source = ReplayBuffer(10, OBS_DIM, ACT_DIM)
    source.add(**batch([1, 2, 3]))
    state = source.state_dict()
    assert state["obs"].shape == (3, OBS_DIM)
    target = ReplayBuffer(10, OBS_DIM, ACT_DIM)
    target.load_state_dict(state)
    assert stored_ids(target) == [1, 2, 3] + [-1] * 7
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(2, OBS_DIM, ACT_DIM).load_state_dict(state)
    # A checkpoint of other widths is refused before any row is overwritten.
    wider = ReplayBuffer(10, OBS_DIM + 1, ACT_DIM)
    wider.add(**batch([7], OBS_DIM + 1))
    with pytest.raises(ValueError, match=r"replay buffer field obs has shape \(3, 3\)"):
        wider.load_state_dict(state)
    assert stored_ids(wider)[:1] == [7] and len(wider) == 1


@pytest.mark.parametrize(("capacity", "obs_dim", "act_dim"), [(1, 1, 1), (10, 3, 2), (257, 17, 6)])
def test_nbytes_is_the_storage_size(capacity: int, obs_dim: int, act_dim: int) -> None:
    buffer = ReplayBuffer(capacity, obs_dim, act_dim)
    tensors = (
        buffer.obs,
        buffer.next_obs,
        buffer.actions,
        buffer.rewards,
        buffer.terminated,
        buffer.truncated,
    )
    assert buffer.nbytes == sum(t.numel() * t.element_size() for t in tensors)
    # float32 obs, next_obs, actions, rewards; one byte per bool flag.
    assert buffer.nbytes == capacity * (4 * (2 * obs_dim + act_dim + 1) + 2)


# ---- terminated vs truncated in SAC's soft Bellman target -----------------------------------


def _linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return x @ layer.weight.detach().double().T + layer.bias.detach().double()


def _hand_target(
    agent: Agent, rewards: torch.Tensor, next_obs: torch.Tensor, alpha: float, seed: int
) -> torch.Tensor:
    """r + γ (min_i Q̄_i(s', a') − α log π(a'|s')), a' drawn with ``seed``, in float64."""
    actor, cfg = agent.actor, agent.cfg
    h = next_obs.double()
    for layer in actor.trunk:
        if isinstance(layer, torch.nn.Linear):
            h = torch.relu(_linear(h, layer))
    mu = _linear(h, actor.mean)
    log_std = _linear(h, actor.log_std).clamp(cfg.log_std_min, cfg.log_std_max)
    std = log_std.exp()
    torch.manual_seed(seed)
    eps = torch.randn(mu.shape, dtype=torch.float32).double()
    u = mu + std * eps
    a = torch.tanh(u)
    log_normal = -((u - mu) ** 2) / (2 * std**2) - log_std - 0.5 * math.log(2 * math.pi)
    log_pi = (log_normal - torch.log(1 - torch.tanh(u) ** 2)).sum(-1)

    x = torch.cat([next_obs.double(), a], -1)
    ens = agent.critic_target.ensemble
    q_members = []
    for i in range(ens.n):
        z = x
        for depth, (w, b) in enumerate(zip(ens.weights, ens.biases, strict=True)):
            z = z @ w[i].detach().double() + b[i, 0].detach().double()
            if depth < len(ens.weights) - 1:
                z = torch.relu(z)
        q_members.append(z.squeeze(-1))
    min_q = torch.stack(q_members).min(0).values
    return rewards.double() + cfg.gamma * (min_q - alpha * log_pi)


def _target_used_by_critic_loss(agent: Agent, batch: Transitions, alpha: float, seed: int):
    """Recover y from ``Agent.critic_loss``: with the online critic stubbed to return q = 0,
    ∂loss/∂q_ib = (q_ib − y_b) / B, so y_b = −B ∂loss/∂q_ib for every member i."""
    n_critics, size = agent.cfg.n_critics, batch.rewards.shape[0]
    q = torch.zeros(n_critics, size, requires_grad=True)
    agent.critic = lambda obs, actions: q  # type: ignore[assignment]
    torch.manual_seed(seed)
    loss, _ = agent.critic_loss(batch, torch.tensor(alpha))
    loss.backward()
    targets = -size * q.grad
    # Every critic is regressed on the same target.
    assert torch.equal(targets[0], targets[-1])
    return targets[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_sac_target_bootstraps_through_truncation_not_termination(seed: int) -> None:
    torch.manual_seed(100 + seed)
    cfg = Config(hidden_sizes=[8, 8], buffer_size=16, gamma=0.9)
    agent = Agent(cfg, EnvSpec(obs_dim=1, act_dim=1), Learner(LearnerConfig(device="cpu")), 1)
    with torch.no_grad():  # target critics that differ from the online ones
        for p in agent.critic_target.parameters():
            p.add_(0.3 * torch.randn_like(p))

    buffer = ReplayBuffer(2, obs_dim=1, act_dim=1)
    buffer.add(
        obs=torch.tensor([[0.5], [-0.3]]),
        actions=torch.tensor([[0.2], [-0.7]]),
        rewards=torch.tensor([1.25, -2.5]),
        next_obs=torch.tensor([[0.8], [1.1]]),
        terminated=torch.tensor([True, False]),
        truncated=torch.tensor([False, True]),
    )
    stored = Transitions(
        buffer.obs,
        buffer.actions,
        buffer.rewards,
        buffer.next_obs,
        buffer.terminated,
        buffer.truncated,
    )
    alpha = 0.7
    got = _target_used_by_critic_loss(agent, stored, alpha, seed)
    expected = _hand_target(agent, stored.rewards, stored.next_obs, alpha, seed)

    # Terminated row: y = r exactly, no bootstrap.
    assert got[0].item() == 1.25
    # Truncated row: bootstraps from s' (the true last observation).
    assert got[1].item() == pytest.approx(expected[1].item(), rel=1e-5, abs=1e-5)
    assert abs(got[1].item() - (-2.5)) > 1e-3  # it really did add a bootstrap term


def test_sac_target_with_neither_flag_bootstraps_too() -> None:
    torch.manual_seed(5)
    cfg = Config(hidden_sizes=[8], buffer_size=4, gamma=0.5, n_critics=3)
    agent = Agent(cfg, EnvSpec(obs_dim=1, act_dim=1), Learner(LearnerConfig(device="cpu")), 1)
    stored = Transitions(
        obs=torch.tensor([[0.0], [1.0]]),
        actions=torch.tensor([[0.0], [0.5]]),
        rewards=torch.tensor([0.5, 0.0]),
        next_obs=torch.tensor([[-1.0], [2.0]]),
        terminated=torch.tensor([False, True]),
        truncated=torch.tensor([False, False]),
    )
    got = _target_used_by_critic_loss(agent, stored, 0.2, seed=11)
    expected = _hand_target(agent, stored.rewards, stored.next_obs, 0.2, seed=11)
    assert got[0].item() == pytest.approx(expected[0].item(), rel=1e-5, abs=1e-5)
    assert got[1].item() == 0.0
