"""rlgrad.rollout: GAE(λ), reward-to-go and the RolloutBuffer.

The vectorised estimators are checked against numbers worked by hand and against a slow
reference written differently: per env, per episode, as explicit forward sums.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlgrad.rollout import RolloutBuffer, complete_episodes, discounted_returns, gae

# ---- slow references ------------------------------------------------------------------------


def episode_end(terminated: list[list[bool]], truncated: list[list[bool]], t: int, i: int) -> int:
    """The last step of the episode that step t of env i belongs to (or the rollout's end)."""
    T = len(terminated)
    end = t
    while end < T - 1 and not (terminated[end][i] or truncated[end][i]):
        end += 1
    return end


def gae_reference(rewards, values, next_values, terminated, truncated, gamma, lam):
    """A_t = Σ_{k=t}^{end} (γλ)^{k−t} δ_k with δ_k = r_k + γ [not term_k] V(s'_k) − V(s_k)."""
    T, N = len(rewards), len(rewards[0])
    adv = [[0.0] * N for _ in range(T)]
    for i in range(N):
        for t in range(T):
            end = episode_end(terminated, truncated, t, i)
            total = 0.0
            for k in range(t, end + 1):
                bootstrap = 0.0 if terminated[k][i] else gamma * next_values[k][i]
                delta = rewards[k][i] + bootstrap - values[k][i]
                total += (gamma * lam) ** (k - t) * delta
            adv[t][i] = total
    returns = [[adv[t][i] + values[t][i] for i in range(N)] for t in range(T)]
    return adv, returns


def returns_reference(rewards, terminated, truncated, gamma, next_values=None):
    """Ĝ_t = Σ_{k=t}^{end} γ^{k−t} r_k (+ γ^{end−t+1} V(s'_end) if the episode did not
    terminate at ``end`` and values are given)."""
    T, N = len(rewards), len(rewards[0])
    out = [[0.0] * N for _ in range(T)]
    for i in range(N):
        for t in range(T):
            end = episode_end(terminated, truncated, t, i)
            total = sum(gamma ** (k - t) * rewards[k][i] for k in range(t, end + 1))
            if next_values is not None and not terminated[end][i]:
                total += gamma ** (end - t + 1) * next_values[end][i]
            out[t][i] = total
    return out


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def tb(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.bool)


# ---- a case worked by hand --------------------------------------------------------------------
# T = 4 steps, N = 2 envs, γ = 0.5, λ = 0.5 (columns are envs).
# env 0: truncated (time limit) at t = 1, a new episode from t = 2 runs past the rollout's end.
# env 1: terminated at t = 1 (its V(s') = 5 must be ignored), truncated at t = 3.
HAND = {
    "rewards": [[1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [4.0, 1.0]],
    "values": [[0.5, 1.0], [1.0, 1.0], [1.0, 1.0], [2.0, 1.0]],
    "next_values": [[1.0, 1.0], [4.0, 5.0], [2.0, 1.0], [8.0, 3.0]],
    "terminated": [[False, False], [False, True], [False, False], [False, False]],
    "truncated": [[False, False], [True, False], [False, False], [False, True]],
}
# env 0: δ = [1 + .5·1 − .5, 2 + .5·4 − 1, 3 + .5·2 − 1, 4 + .5·8 − 2] = [1, 3, 3, 6]
#        A3 = 6, A2 = 3 + .25·6 = 4.5, A1 = 3 (truncated: no carry), A0 = 1 + .25·3 = 1.75
# env 1: δ = [1 + .5 − 1, 1 − 1 (terminated), 1 + .5 − 1, 1 + .5·3 − 1] = [.5, 0, .5, 1.5]
#        A3 = 1.5, A2 = .5 + .25·1.5 = .875, A1 = 0, A0 = .5 + .25·0 = .5
HAND_ADV = [[1.75, 0.5], [3.0, 0.0], [4.5, 0.875], [6.0, 1.5]]
HAND_GAE_RETURNS = [[2.25, 1.5], [4.0, 1.0], [5.5, 1.875], [8.0, 2.5]]
# Reward-to-go, γ = .5, bootstrapped: env 0: G3 = 4 + .5·8 = 8, G2 = 3 + .5·8 = 7,
#   G1 = 2 + .5·4 = 4 (truncated), G0 = 1 + .5·4 = 3;
#   env 1: G3 = 1 + .5·3 = 2.5, G2 = 1 + .5·2.5 = 2.25, G1 = 1 (terminated), G0 = 1 + .5 = 1.5.
HAND_RETURNS_BOOT = [[3.0, 1.5], [4.0, 1.0], [7.0, 2.25], [8.0, 2.5]]
# Without values the return is cut at truncations and at the end of the rollout:
#   env 0: G3 = 4, G2 = 3 + 2 = 5, G1 = 2, G0 = 1 + 1 = 2; env 1: G3 = 1, G2 = 1.5, G1 = 1, G0 = 1.5
HAND_RETURNS_CUT = [[2.0, 1.5], [2.0, 1.0], [5.0, 1.5], [4.0, 1.0]]


def test_gae_by_hand() -> None:
    h = HAND
    adv, ret = gae(
        t64(h["rewards"]),
        t64(h["values"]),
        t64(h["next_values"]),
        tb(h["terminated"]),
        tb(h["truncated"]),
        gamma=0.5,
        lam=0.5,
    )
    torch.testing.assert_close(adv, t64(HAND_ADV))
    torch.testing.assert_close(ret, t64(HAND_GAE_RETURNS))


def test_returns_by_hand() -> None:
    h = HAND
    args = (t64(h["rewards"]), tb(h["terminated"]), tb(h["truncated"]), 0.5)
    torch.testing.assert_close(
        discounted_returns(*args, next_values=t64(h["next_values"])), t64(HAND_RETURNS_BOOT)
    )
    torch.testing.assert_close(discounted_returns(*args), t64(HAND_RETURNS_CUT))


def test_hand_case_matches_the_reference() -> None:
    h = HAND
    adv, ret = gae_reference(
        h["rewards"], h["values"], h["next_values"], h["terminated"], h["truncated"], 0.5, 0.5
    )
    torch.testing.assert_close(t64(adv), t64(HAND_ADV))
    torch.testing.assert_close(t64(ret), t64(HAND_GAE_RETURNS))
    boot = returns_reference(h["rewards"], h["terminated"], h["truncated"], 0.5, h["next_values"])
    torch.testing.assert_close(t64(boot), t64(HAND_RETURNS_BOOT))
    cut = returns_reference(h["rewards"], h["terminated"], h["truncated"], 0.5)
    torch.testing.assert_close(t64(cut), t64(HAND_RETURNS_CUT))


def test_complete_episodes_by_hand() -> None:
    mask = complete_episodes(tb(HAND["terminated"]), tb(HAND["truncated"]))
    # env 0's second episode is unfinished at the boundary; env 1 ends at t = 3.
    expected = [[True, True], [True, True], [False, True], [False, True]]
    assert mask.tolist() == expected


def test_larger_rollout_against_reference() -> None:
    """T = 9, N = 3, a truncation and a termination inside one env's rollout, float32."""
    g = torch.Generator().manual_seed(0)
    T, N = 9, 3
    rewards = torch.randn(T, N, generator=g)
    values = torch.randn(T, N, generator=g)
    next_values = torch.randn(T, N, generator=g)
    terminated = torch.zeros(T, N, dtype=torch.bool)
    truncated = torch.zeros(T, N, dtype=torch.bool)
    terminated[2, 0] = truncated[5, 0] = True  # env 0: both, in one rollout
    truncated[8, 1] = True  # env 1: truncated on the last step
    terminated[4, 2] = truncated[4, 2] = True  # env 2: both flags at once: a termination
    gamma, lam = 0.97, 0.9
    adv, ret = gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    ref_adv, ref_ret = gae_reference(
        rewards.tolist(),
        values.tolist(),
        next_values.tolist(),
        terminated.tolist(),
        truncated.tolist(),
        gamma,
        lam,
    )
    torch.testing.assert_close(adv, torch.tensor(ref_adv))
    torch.testing.assert_close(ret, torch.tensor(ref_ret))
    for nv in (next_values, None):
        got = discounted_returns(rewards, terminated, truncated, gamma, nv)
        want = returns_reference(
            rewards.tolist(),
            terminated.tolist(),
            truncated.tolist(),
            gamma,
            nv.tolist() if nv is not None else None,
        )
        torch.testing.assert_close(got, torch.tensor(want))


# ---- property tests -------------------------------------------------------------------------


@st.composite
def rollouts(draw):
    T = draw(st.integers(1, 10))
    N = draw(st.integers(1, 4))
    floats = st.floats(-10, 10, allow_nan=False, width=64)
    grid = lambda elem: st.lists(  # noqa: E731
        st.lists(elem, min_size=N, max_size=N), min_size=T, max_size=T
    )
    return {
        "rewards": draw(grid(floats)),
        "values": draw(grid(floats)),
        "next_values": draw(grid(floats)),
        "terminated": draw(grid(st.booleans())),
        "truncated": draw(grid(st.booleans())),
        "gamma": draw(st.floats(0, 1)),
        "lam": draw(st.floats(0, 1)),
    }


@settings(max_examples=150, deadline=None)
@given(rollouts())
def test_gae_equals_slow_reference(r) -> None:
    adv, ret = gae(
        t64(r["rewards"]),
        t64(r["values"]),
        t64(r["next_values"]),
        tb(r["terminated"]),
        tb(r["truncated"]),
        r["gamma"],
        r["lam"],
    )
    ref_adv, ref_ret = gae_reference(
        r["rewards"],
        r["values"],
        r["next_values"],
        r["terminated"],
        r["truncated"],
        r["gamma"],
        r["lam"],
    )
    torch.testing.assert_close(adv, t64(ref_adv), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ret, t64(ref_ret), rtol=1e-9, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(rollouts(), st.booleans())
def test_returns_equal_slow_reference(r, bootstrap: bool) -> None:
    nv = r["next_values"] if bootstrap else None
    got = discounted_returns(
        t64(r["rewards"]),
        tb(r["terminated"]),
        tb(r["truncated"]),
        r["gamma"],
        t64(nv) if nv is not None else None,
    )
    want = returns_reference(r["rewards"], r["terminated"], r["truncated"], r["gamma"], nv)
    torch.testing.assert_close(got, t64(want), rtol=1e-9, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(rollouts())
def test_gae_lambda_one_is_the_bootstrapped_return(r) -> None:
    """With λ = 1 and V(s'_t) = V(s_{t+1}) inside episodes, A + V = Ĝ (bootstrapped)."""
    values = t64(r["values"])
    terminated, truncated = tb(r["terminated"]), tb(r["truncated"])
    next_values = t64(r["next_values"])
    inside = ~(terminated | truncated)[:-1]
    next_values[:-1] = torch.where(inside, values[1:], next_values[:-1])
    rewards = t64(r["rewards"])
    _, ret = gae(rewards, values, next_values, terminated, truncated, r["gamma"], 1.0)
    want = discounted_returns(rewards, terminated, truncated, r["gamma"], next_values)
    torch.testing.assert_close(ret, want, rtol=1e-9, atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(rollouts())
def test_complete_episodes_reference(r) -> None:
    term, trunc = r["terminated"], r["truncated"]
    T, N = len(term), len(term[0])
    want = [
        [
            (lambda end: term[end][i] or trunc[end][i])(episode_end(term, trunc, t, i))
            for i in range(N)
        ]
        for t in range(T)
    ]
    assert complete_episodes(tb(term), tb(trunc)).tolist() == want


# ---- the buffer -------------------------------------------------------------------------------


def step(k: int, n_envs: int = 2, obs_dim: int = 3, act_dim: int = 2) -> dict[str, torch.Tensor]:
    """One vector step whose every field encodes (step k, env i) as 10k + i."""
    ids = torch.tensor([10.0 * k + i for i in range(n_envs)])
    return {
        "obs": ids[:, None] + torch.arange(obs_dim) / 10,
        "actions": -ids[:, None] - torch.arange(act_dim) / 10,
        "rewards": ids,
        "next_obs": ids[:, None] + 0.5 + torch.arange(obs_dim) / 10,
        "terminated": torch.tensor([(k + i) % 3 == 0 for i in range(n_envs)]),
        "truncated": torch.tensor([(k + i) % 4 == 0 for i in range(n_envs)]),
    }


def test_buffer_stores_time_major_and_flattens_time_then_env() -> None:
    buf = RolloutBuffer(3, 2, 3, 2)
    assert buf.pos == 0 and not buf.full
    for k in range(3):
        buf.add(**step(k))
    assert buf.full and buf.size == 6
    assert buf.rewards.tolist() == [[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]]
    assert buf.flat("rewards").tolist() == [0.0, 1.0, 10.0, 11.0, 20.0, 21.0]
    assert buf.flat("obs").shape == (6, 3) and buf.flat("actions").shape == (6, 2)
    assert buf.terminated.dtype == torch.bool
    with pytest.raises(RuntimeError, match="full"):
        buf.add(**step(3))
    buf.reset()
    assert buf.pos == 0
    buf.add(**step(7))
    assert buf.flat("rewards").tolist() == [70.0, 71.0]


def test_minibatches_cover_one_permutation_and_keep_rows_together() -> None:
    buf = RolloutBuffer(5, 2, 3, 2)
    for k in range(5):
        buf.add(**step(k))
    rewards, obs = buf.flat("rewards"), buf.flat("obs")
    seen = []
    sizes = []
    torch.manual_seed(0)
    for mb_rewards, mb_obs in buf.minibatches(4, rewards, obs):
        sizes.append(len(mb_rewards))
        assert torch.equal(mb_obs[:, 0], mb_rewards)  # rows stay aligned across tensors
        seen += mb_rewards.tolist()
    assert sizes == [4, 4, 2]
    assert sorted(seen) == sorted(rewards.tolist())
    assert seen != rewards.tolist()  # shuffled (fixed seed)
    with pytest.raises(ValueError, match="batch dimension"):
        next(buf.minibatches(4, rewards, obs[:3]))


def test_buffer_state_dict_round_trip() -> None:
    buf = RolloutBuffer(4, 2, 3, 2)
    for k in range(3):
        buf.add(**step(k))
    state = buf.state_dict()
    other = RolloutBuffer(4, 2, 3, 2)
    other.load_state_dict(state)
    assert other.pos == 3
    for name in RolloutBuffer.FIELDS:
        assert torch.equal(getattr(other, name), getattr(buf, name)), name
    other.add(**step(3))
    assert other.full
    with pytest.raises(ValueError):
        RolloutBuffer(2, 2, 3, 2).load_state_dict(state)
    with pytest.raises(ValueError, match="shape"):
        RolloutBuffer(4, 3, 3, 2).load_state_dict(state)
