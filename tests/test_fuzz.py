"""Property-based tests (hypothesis) for the config loader and the buffers.

* The config loader, fed random overrides (keys from the real schema, junk keys, random text and
  YAML-ish values), either returns a valid config with the last override applied or raises
  ``ConfigError`` with a one-line message: never another exception.
* ``RolloutBuffer``'s GAE(λ) and returns, through ``add``/``compute_gae``/``compute_returns`` in
  float32 on simulated episode streams (random lengths, envs, termination and truncation
  patterns, γ, λ), equal a slow λ-return reference to 1e-5. (tests/test_rollout.py checks the
  bare functions against a forward-sum reference; this reference is the backward λ-return.)
* ``ReplayBuffer`` with random shapes, capacities and batch sizes holds what a ``deque`` holds,
  and SAC's TD targets on its samples bootstrap through truncations and not terminations.
* ``rlgrad train`` (in-process, ``rlgrad.cli.main``) with generated bad values for a few keys,
  among them values that pass the schema but fail when the run is built (negative network
  sizes, env kwargs the env cannot use): exit code 2, exactly one stderr line
  ``rlgrad: error: …``, nothing on stdout, and an existing run directory unchanged even with
  ``--overwrite``; no training starts.
"""

from __future__ import annotations

import math
import re
import types
from collections import deque
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import numpy as np
import pytest
import torch
import yaml
from conftest import CONFIGS, SAC_PENDULUM, TINY_OVERRIDES, run_cli, snapshot
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from test_buffers import _target_used_by_critic_loss

from rlgrad.agents import AGENT_NAMES, agent_spec
from rlgrad.agents.sac import Agent as SacAgent
from rlgrad.agents.sac import Config as SacConfig
from rlgrad.buffers import ReplayBuffer, Transitions
from rlgrad.config import ConfigError, LearnerConfig, RunConfig, load_config, parse_overrides
from rlgrad.envs import EnvSpec
from rlgrad.learner import Learner
from rlgrad.rollout import RolloutBuffer

# ---- the config loader ------------------------------------------------------------------------

SHIPPED = sorted(CONFIGS.glob("*.yaml"))


def is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def schema_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    """Every dotted key of a config model with its annotation, sections included."""
    fields = []
    for name, field in model.model_fields.items():
        fields.append((prefix + name, field.annotation))
        if is_model(field.annotation):
            fields += schema_fields(field.annotation, f"{prefix}{name}.")
    return fields


def run_config(agent: str) -> type[BaseModel]:
    return RunConfig[agent_spec(agent).config]  # type: ignore[misc]


SCHEMA_KEYS = sorted({key for name in AGENT_NAMES for key, _ in schema_fields(run_config(name))})
assert "agent.batch_size" in SCHEMA_KEYS and "env.kwargs" in SCHEMA_KEYS
# The leaves (keys that take a value) of each agent's schema, and the agent of each config.
LEAVES = {
    name: [(k, a) for k, a in schema_fields(run_config(name)) if not is_model(a)]
    for name in AGENT_NAMES
}
AGENT_OF = {path: load_config(path).agent.name for path in SHIPPED}

identifier = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
keys = st.one_of(
    st.sampled_from(SCHEMA_KEYS),
    st.builds(lambda k, j: f"{k}.{j}", st.sampled_from(SCHEMA_KEYS), identifier),
    st.lists(identifier, min_size=1, max_size=3).map(".".join),
)
values = st.one_of(
    st.text(max_size=20),
    st.integers(-(10**20), 10**20).map(str),
    st.floats().map(repr),
    st.sampled_from(
        ["true", "false", "null", "~", "auto", "[]", "{}", "[64, 64]", "[1,", "{a: 1}", "'x'"]
        + ["${seed}", "${nope}", "${oc.env:HOME}", ".inf", "-.inf", ".nan", "1e-3", "0x10"]
        + ["sac", "ppo", "reinforce", "sync", "cpu", "pathwise", "score", "Pendulum-v1"]
    ),
    st.lists(st.integers(-3, 300), max_size=3).map(str),
)
overrides = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", keys, values),
    st.text(max_size=30),  # anything at all, well-formed or not
)


def typed_values(annotation: Any) -> st.SearchStrategy[str]:
    """Override values of the annotation's type (in or out of the field's range)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return st.sampled_from([str(a) for a in args])
    if origin in (Union, types.UnionType):
        return st.one_of(*(typed_values(a) for a in args))
    if annotation is type(None):
        return st.just("null")
    if annotation is bool:
        return st.sampled_from(["true", "false"])
    if annotation is int:
        return st.integers(-3, 10**6).map(str)
    if annotation is float:
        return st.floats(-10, 1e6, allow_nan=False).map(repr)
    if annotation is str:
        return identifier
    if origin is list:
        items = typed_values(args[0])
        return st.lists(items, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]")
    if origin is dict:
        return st.sampled_from(["{}", "{max_episode_steps: 50}"])
    return values


@st.composite
def config_and_overrides(draw) -> tuple[Path, list[str]]:
    """A shipped config and up to three overrides: typed ones for its own schema's keys (2/3)
    or anything from ``overrides``."""
    config = draw(st.sampled_from(SHIPPED))
    typed = st.sampled_from(LEAVES[AGENT_OF[config]]).flatmap(
        lambda field: typed_values(field[1]).map(lambda v: f"{field[0]}={v}")
    )
    return config, draw(st.lists(st.one_of(typed, typed, overrides), max_size=3))


def assert_applied(expected: Any, actual: Any, where: str) -> None:
    """``actual`` holds ``expected``: equal, or for a mapping, a superset (a dict merges)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} missing"
            assert_applied(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float) and math.isnan(actual), where
    else:
        assert expected == actual, f"{where}: {actual!r} != {expected!r}"


@settings(max_examples=100, deadline=None)
@given(config_and_overrides())
# Inputs that once escaped as other exceptions or as two-line messages.
@example((SAC_PENDULUM, ["seed=" + "1" * 5000]))  # ValueError: int of more than 4300 digits
@example((SAC_PENDULUM, ["seed=" + "[" * 2000 + "]" * 2000]))  # RecursionError
@example((SAC_PENDULUM, ["logging=[]"]))  # TypeError from OmegaConf.merge
@example((SAC_PENDULUM, ["agent.name=sac", "agent=[]"]))  # the same between two overrides
@example((SAC_PENDULUM, ["agent.name=a\u2028b"]))  # a line separator in the message
@example((SAC_PENDULUM, ["agent.ent_coef=abc"]))  # a union's per-branch errors
def test_config_loader_applies_overrides_or_raises_one_line_config_error(
    case: tuple[Path, list[str]],
) -> None:
    config, items = case
    try:
        cfg = load_config(config, items)
    except ConfigError as exc:
        message = str(exc)
        assert message.strip(), "empty error message"
        assert len(message.splitlines()) == 1, f"multi-line error: {message!r}"
        # Keys are named as the user writes them, not with pydantic's union-branch names.
        assert not re.search(r"config key '[\w.\[\]]*\.(float|int|str|bool)'|literal\[", message)
        return
    assert isinstance(cfg, RunConfig)
    if not items or "${" in items[-1]:
        return  # an interpolation resolves to another value than the one written
    # The last override wins: the config holds its (YAML-typed) value.
    ((key, value),) = parse_overrides(items[-1:]).items()
    actual = cfg.model_dump()
    assert key in actual
    assert_applied(value, actual[key], key)


# ---- GAE(λ) and returns through the RolloutBuffer ------------------------------------------


@st.composite
def episode_streams(draw) -> dict[str, Any]:
    """``n_steps`` vector steps of ``n_envs`` simulated envs: at a step that ends an episode,
    ``next_obs`` is the true final observation and the next ``obs`` a fresh first one."""
    T, N = draw(st.integers(1, 24)), draw(st.integers(1, 5))
    obs_dim = draw(st.integers(1, 4))
    flags = st.lists(st.lists(st.booleans(), min_size=N, max_size=N), min_size=T, max_size=T)
    sparse = st.lists(
        st.lists(st.sampled_from([False] * 4 + [True]), min_size=N, max_size=N),
        min_size=T,
        max_size=T,
    )
    terminated = np.array(draw(st.one_of(flags, sparse)), dtype=bool)
    truncated = np.array(draw(st.one_of(flags, sparse)), dtype=bool)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    fresh = lambda: rng.normal(size=(N, obs_dim)).astype(np.float32)  # noqa: E731
    obs, next_obs = np.empty((T, N, obs_dim), np.float32), np.empty((T, N, obs_dim), np.float32)
    current = fresh()
    for t in range(T):
        obs[t] = current
        next_obs[t] = fresh()  # the observation reached: a final one where the episode ends
        done = terminated[t] | truncated[t]
        current = np.where(done[:, None], fresh(), next_obs[t])  # reset where it ended
    return {
        "obs": obs,
        "next_obs": next_obs,
        "actions": rng.normal(size=(T, N, draw(st.integers(1, 3)))).astype(np.float32),
        "rewards": rng.uniform(-1, 1, size=(T, N)).astype(np.float32),
        "terminated": terminated,
        "truncated": truncated,
        "w": rng.normal(size=obs_dim).astype(np.float32),
        "gamma": draw(st.floats(0, 1)),
        "lam": draw(st.floats(0, 1)),
    }


def value_fn(w: np.ndarray):
    weights = torch.from_numpy(w)
    return lambda obs: 2.0 * torch.tanh(obs @ weights) + 0.5


def filled_rollout(s: dict[str, Any]) -> RolloutBuffer:
    T, N, obs_dim = s["obs"].shape
    buffer = RolloutBuffer(T, N, obs_dim, s["actions"].shape[-1])
    for t in range(T):
        buffer.add(*(torch.from_numpy(np.asarray(s[name][t])) for name in RolloutBuffer.FIELDS))
    assert buffer.full
    return buffer


def lambda_return_reference(s: dict[str, Any], V) -> tuple[list[list[float]], list[list[float]]]:
    """Per env, backwards: G_t = r_t + γ((1 − λ) V(s_{t+1}) + λ G_{t+1}) inside an episode;
    at its last step G = r after a termination, r + γ V(final obs) after a truncation or at
    the rollout's end. Returns (A = G − V(s), G), plain Python floats."""
    T, N, _ = s["obs"].shape
    v = V(torch.from_numpy(s["obs"])).double().tolist()
    v_next = V(torch.from_numpy(s["next_obs"])).double().tolist()
    rewards, gamma, lam = s["rewards"].astype(float).tolist(), s["gamma"], s["lam"]
    adv = [[0.0] * N for _ in range(T)]
    ret = [[0.0] * N for _ in range(T)]
    for i in range(N):
        g = 0.0
        for t in reversed(range(T)):
            r = rewards[t][i]
            if s["terminated"][t, i]:
                g = r
            elif s["truncated"][t, i] or t == T - 1:
                g = r + gamma * v_next[t][i]  # the true final observation's value
            else:
                assert np.array_equal(s["next_obs"][t, i], s["obs"][t + 1, i])
                g = r + gamma * ((1 - lam) * v[t + 1][i] + lam * g)
            ret[t][i] = g
            adv[t][i] = g - v[t][i]
    return adv, ret


def monte_carlo_reference(s: dict[str, Any], V, bootstrap: bool) -> list[list[float]]:
    """Ĝ_t = Σ γ^k r_{t+k} to the episode's last step, + γ^{…} V(final obs) there when
    ``bootstrap`` and the episode was cut (truncated, or unfinished at the rollout's end)."""
    T, N, _ = s["obs"].shape
    v_next = V(torch.from_numpy(s["next_obs"])).double().tolist()
    rewards, gamma = s["rewards"].astype(float).tolist(), s["gamma"]
    out = [[0.0] * N for _ in range(T)]
    for i in range(N):
        g = 0.0
        for t in reversed(range(T)):
            cut = s["terminated"][t, i] or s["truncated"][t, i] or t == T - 1
            if s["terminated"][t, i]:
                g = rewards[t][i]
            elif cut:
                g = rewards[t][i] + (gamma * v_next[t][i] if bootstrap else 0.0)
            else:
                g = rewards[t][i] + gamma * g
            out[t][i] = g
    return out


def close(got: torch.Tensor, want: list[list[float]]) -> None:
    torch.testing.assert_close(
        got.double(), torch.tensor(want, dtype=torch.float64).reshape(-1), rtol=1e-5, atol=1e-5
    )


@settings(max_examples=100, deadline=None)
@given(episode_streams())
def test_rollout_gae_equals_lambda_return_reference(s: dict[str, Any]) -> None:
    buffer, V = filled_rollout(s), value_fn(s["w"])
    values, next_values = V(buffer.flat("obs")), V(buffer.flat("next_obs"))
    adv, ret = buffer.compute_gae(values, next_values, s["gamma"], s["lam"])
    ref_adv, ref_ret = lambda_return_reference(s, V)
    close(adv, ref_adv)
    close(ret, ref_ret)

    # A termination never bootstraps: V(final obs) there can be anything.
    term = torch.from_numpy(s["terminated"]).reshape(-1)
    scrambled = torch.where(term, torch.full_like(next_values, 1e6), next_values)
    adv2, ret2 = buffer.compute_gae(values, scrambled, s["gamma"], s["lam"])
    assert torch.equal(adv2, adv) and torch.equal(ret2, ret)


@settings(max_examples=75, deadline=None)
@given(episode_streams(), st.booleans())
def test_rollout_returns_equal_monte_carlo_reference(s: dict[str, Any], bootstrap: bool) -> None:
    buffer, V = filled_rollout(s), value_fn(s["w"])
    next_values = V(buffer.flat("next_obs")) if bootstrap else None
    close(buffer.compute_returns(s["gamma"], next_values), monte_carlo_reference(s, V, bootstrap))


# ---- the replay buffer ------------------------------------------------------------------------


@st.composite
def replay_streams(draw) -> dict[str, Any]:
    capacity = draw(st.integers(1, 30))
    return {
        "capacity": capacity,
        "obs_dim": draw(st.integers(1, 5)),
        "act_dim": draw(st.integers(1, 4)),
        "batches": draw(st.lists(st.integers(1, capacity), min_size=1, max_size=12)),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "p_done": draw(st.sampled_from([0.0, 0.2, 0.5, 1.0])),
    }


FIELDS = Transitions._fields


def fill_replay(s: dict[str, Any]) -> tuple[ReplayBuffer, deque]:
    """Random transitions into a ReplayBuffer and a deque(maxlen=capacity); obs[:, 0] is a
    unique id for each transition."""
    gen = torch.Generator().manual_seed(s["seed"])
    buffer = ReplayBuffer(s["capacity"], s["obs_dim"], s["act_dim"])
    reference: deque = deque(maxlen=s["capacity"])
    next_id = 0
    for n in s["batches"]:
        batch = {
            "obs": torch.randn(n, s["obs_dim"], generator=gen),
            "actions": torch.rand(n, s["act_dim"], generator=gen) * 2 - 1,
            "rewards": torch.randn(n, generator=gen),
            "next_obs": torch.randn(n, s["obs_dim"], generator=gen),
            "terminated": torch.rand(n, generator=gen) < s["p_done"],
            "truncated": torch.rand(n, generator=gen) < s["p_done"],
        }
        batch["obs"][:, 0] = torch.arange(next_id, next_id + n, dtype=torch.float32)
        next_id += n
        buffer.add(**batch)
        reference.extend({name: batch[name][j].clone() for name in FIELDS} for j in range(n))
    return buffer, reference


@settings(max_examples=75, deadline=None)
@given(replay_streams())
def test_replay_buffer_holds_what_a_deque_holds(s: dict[str, Any]) -> None:
    buffer, reference = fill_replay(s)
    assert len(buffer) == len(reference)
    # Oldest to newest: rows pos..end then 0..pos once the ring has wrapped.
    order = list(range(buffer.size))
    if buffer.size == buffer.capacity:
        order = order[buffer.pos :] + order[: buffer.pos]
    for name in FIELDS:
        stored = getattr(buffer, name)[order]
        expected = torch.stack([row[name] for row in reference])
        assert torch.equal(stored, expected), name

    # A restored copy holds the same and continues the same way.
    copy = ReplayBuffer(s["capacity"], s["obs_dim"], s["act_dim"])
    copy.load_state_dict(buffer.state_dict())
    assert (copy.pos, copy.size) == (buffer.pos, buffer.size)
    for name in FIELDS:
        assert torch.equal(getattr(copy, name)[: copy.size], getattr(buffer, name)[: buffer.size])


@pytest.fixture(scope="module")
def sac_agents() -> dict[tuple[int, int], SacAgent]:
    """One small SAC agent per (obs_dim, act_dim), built on first use."""
    return {}


@settings(max_examples=50, deadline=None)
@given(replay_streams(), st.integers(1, 64), st.floats(0.1, 2.0))
def test_sac_targets_on_sampled_rows_bootstrap_through_truncation_only(
    sac_agents: dict[tuple[int, int], SacAgent], s: dict[str, Any], batch_size: int, alpha: float
) -> None:
    buffer, reference = fill_replay(s)
    sample = buffer.sample(batch_size, torch.Generator().manual_seed(s["seed"]))
    # Every sampled row is one stored transition, all fields together.
    by_id = {int(row["obs"][0]): row for row in reference}
    for b, transition_id in enumerate(sample.obs[:, 0].long().tolist()):
        row = by_id[transition_id]
        for name in FIELDS:
            assert torch.equal(getattr(sample, name)[b], row[name]), name

    dims = (s["obs_dim"], s["act_dim"])
    if dims not in sac_agents:
        torch.manual_seed(sum(dims))
        cfg = SacConfig(hidden_sizes=[16], buffer_size=1, gamma=0.9)
        learner = Learner(LearnerConfig(device="cpu"))
        sac_agents[dims] = SacAgent(cfg, EnvSpec(*dims), learner, n_envs=1)
    agent = sac_agents[dims]
    target = _target_used_by_critic_loss(agent, sample, alpha, seed=s["seed"] % 1000)
    # The same rows with r = 0 and neither flag: y0 = γ V_soft(s'), the bootstrap term.
    no_flags = torch.zeros_like(sample.terminated)
    bootstrap = _target_used_by_critic_loss(
        agent,
        sample._replace(
            rewards=torch.zeros_like(sample.rewards), terminated=no_flags, truncated=no_flags
        ),
        alpha,
        seed=s["seed"] % 1000,
    )
    expected = sample.rewards + torch.where(sample.terminated, 0.0, bootstrap)
    torch.testing.assert_close(target, expected, rtol=1e-5, atol=1e-5)
    # Terminated rows (truncated or not) are r alone.
    torch.testing.assert_close(
        target[sample.terminated], sample.rewards[sample.terminated], rtol=1e-6, atol=1e-6
    )


# ---- rlgrad train with bad values ---------------------------------------------------------------

# A word that YAML (and so an override) reads as a string, never a number, bool or null.
word = st.from_regex(r"[a-z][a-z_]{0,7}", fullmatch=True).filter(
    lambda w: isinstance(yaml.safe_load(w), str)
)
bad_overrides = st.one_of(
    # Pass the schema, fail when the run is built.
    st.lists(st.integers(-1000, 64), min_size=1, max_size=3)
    .filter(lambda sizes: min(sizes) < 0)
    .map(lambda sizes: f"agent.hidden_sizes=[{','.join(map(str, sizes))}]"),
    word.map(lambda w: f"env.kwargs={{g: {w}}}"),  # Pendulum's gravity as a word
    st.builds(lambda w, n: f"env.kwargs={{zz_{w}: {n}}}", word, st.integers(-5, 5)),
    *([] if torch.cuda.is_available() else [st.just("learner.device=cuda")]),
    # Fail the schema or the env lookup.
    word.map(lambda w: f"env.id={w.capitalize()}-v0"),
    st.integers(-(10**6), 0).map(lambda n: f"total_steps={n}"),
    word.map(lambda w: f"agent.batch_size={w}"),
)


@pytest.fixture(scope="module")
def occupied_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that holds a run (which no refused command may touch)."""
    run_dir = tmp_path_factory.mktemp("fuzz_train") / "existing"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("agent:\n  name: sac\ntotal_steps: 7\n")
    (run_dir / "metrics.jsonl").write_text('{"global_step": 7}\n')
    (run_dir / "checkpoints" / "latest.pt").write_bytes(b"precious")
    return run_dir


@settings(max_examples=25, deadline=None)
@given(bad_overrides, st.booleans())
@example("agent.hidden_sizes=[-1]", True)
@example("env.kwargs={g: abc}", True)
def test_train_with_bad_values_is_one_error_line_and_touches_nothing(
    occupied_run: Path, override: str, overwrite: bool
) -> None:
    before = snapshot(occupied_run)
    args = ["train", SAC_PENDULUM, *TINY_OVERRIDES, override, "--quiet"]
    args += ["--run-dir", occupied_run, *(["--overwrite"] if overwrite else [])]
    code, out, err = run_cli(*args)
    assert code == 2, (override, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlgrad: error:"), (override, err)
    assert "Traceback" not in err
    assert snapshot(occupied_run) == before, f"{override} changed the run directory"
