"""rlgrad.config: YAML + dotted overrides validated into a typed RunConfig; one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CONFIGS, SAC_PENDULUM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlgrad.agents import AGENT_NAMES
from rlgrad.config import ConfigError, load_config, parse_overrides, to_yaml


def config_error(overrides: list[str], path: Path = SAC_PENDULUM) -> str:
    """The message of the ConfigError that loading with ``overrides`` raises (one line)."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert message, "empty error message"
    assert len(message.splitlines()) == 1, f"multi-line error: {message!r}"
    return message


# ---- defaults and overrides ---------------------------------------------------------------


def test_sac_pendulum_has_sb3_defaults() -> None:
    cfg = load_config(SAC_PENDULUM)
    agent = cfg.agent
    assert agent.name == "sac"
    assert agent.batch_size == 256
    assert agent.learning_rate == 3e-4
    assert agent.buffer_size == 1_000_000
    assert agent.tau == 0.005
    assert agent.gamma == 0.99
    assert agent.learning_starts == 100
    assert agent.hidden_sizes == [256, 256]
    assert agent.ent_coef == "auto"
    assert agent.train_freq == 1 and agent.gradient_steps == 1
    assert cfg.env.id == "Pendulum-v1"
    assert cfg.total_steps == 20000 and cfg.seed == 0


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.total_steps > 0
    assert cfg.agent.name in AGENT_NAMES


def test_dotted_overrides_are_typed() -> None:
    cfg = load_config(
        SAC_PENDULUM,
        [
            "agent.batch_size=512",
            "env.id=InvertedPendulum-v5",
            "total_steps=5000",
            "seed=3",
            "agent.learning_rate=1e-3",
            "agent.hidden_sizes=[64,64]",
        ],
    )
    assert cfg.agent.batch_size == 512 and type(cfg.agent.batch_size) is int
    assert cfg.env.id == "InvertedPendulum-v5"
    assert cfg.total_steps == 5000 and type(cfg.total_steps) is int
    assert cfg.seed == 3 and type(cfg.seed) is int
    assert cfg.agent.learning_rate == 1e-3 and type(cfg.agent.learning_rate) is float
    assert cfg.agent.hidden_sizes == [64, 64]
    assert all(type(h) is int for h in cfg.agent.hidden_sizes)
    # Untouched keys keep the file's values.
    assert cfg.agent.tau == 0.005 and cfg.eval.episodes == 10


def test_later_override_wins_and_nested_dict_override() -> None:
    cfg = load_config(
        SAC_PENDULUM, ["seed=1", "seed=2", "env.kwargs.max_episode_steps=5", "name=run-a"]
    )
    assert cfg.seed == 2
    assert cfg.env.kwargs == {"max_episode_steps": 5}
    assert cfg.name == "run-a"


def test_parse_overrides_builds_nested_dict() -> None:
    assert parse_overrides(["agent.tau=0.01", "seed=4", "env.id=Foo-v0"]) == {
        "agent": {"tau": 0.01},
        "seed": 4,
        "env": {"id": "Foo-v0"},
    }


# ---- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "a_valid_key"),
    [
        ("agent.batch_sise=512", "agent.batch_sise", "batch_size"),
        ("bogus=1", "bogus", "total_steps"),
        ("env.n_env=2", "env.n_env", "n_envs"),
        ("learner.devise=cpu", "learner.devise", "device"),
    ],
)
def test_unknown_key_names_it_and_lists_valid_keys(
    override: str, key: str, a_valid_key: str
) -> None:
    message = config_error([override])
    assert key in message
    assert a_valid_key in message


def test_unknown_agent_key_lists_all_agent_keys() -> None:
    message = config_error(["agent.lr=1e-3"])
    assert "agent.lr" in message
    for valid in ("batch_size", "learning_rate", "tau", "gamma", "buffer_size"):
        assert valid in message


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("agent.batch_size=abc", "agent.batch_size", "abc"),
        ("agent.learning_rate=fast", "agent.learning_rate", "fast"),
        ("seed=1.5", "seed", "1.5"),
        ("agent.hidden_sizes=64", "agent.hidden_sizes", "64"),
        ("env.id=3", "env.id", "3"),
    ],
)
def test_wrong_type_names_key_and_value(override: str, key: str, value: str) -> None:
    message = config_error([override])
    assert key in message
    assert value in message


@pytest.mark.parametrize("override", ["agent.batch_size=true", "total_steps=true"])
def test_boolean_for_int_key_is_refused(override: str) -> None:
    config_error([override])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("total_steps=0", "total_steps"),
        ("total_steps=-5", "total_steps"),
        ("agent.batch_size=0", "agent.batch_size"),
        ("agent.tau=1.5", "agent.tau"),
        ("env.n_envs=0", "env.n_envs"),
        ("agent.hidden_sizes=[]", "agent.hidden_sizes"),
    ],
)
def test_out_of_range_value_names_key(override: str, key: str) -> None:
    message = config_error([override])
    assert key in message


def test_total_steps_zero_says_what_is_valid() -> None:
    message = config_error(["total_steps=0"])
    assert "total_steps" in message and "greater than 0" in message


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    message = config_error([], path=missing)
    assert "not found" in message and str(missing) in message


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    message = config_error([], path=path)
    assert str(path) in message and "mapping" in message


def test_unparsable_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("agent: {name: sac\ntotal_steps: [\n")
    message = config_error([], path=path)
    assert str(path) in message


@pytest.mark.parametrize("override", ["agent.lr", "=3", "agent..lr=3", "1seed=3", " seed=3"])
def test_malformed_override(override: str) -> None:
    message = config_error([override])
    assert "malformed override" in message
    assert repr(override) in message
    assert "KEY=VALUE" in message


def test_override_with_unparsable_value() -> None:
    message = config_error(["agent.hidden_sizes=[64,"])
    assert "agent.hidden_sizes" in message


def test_unknown_agent_lists_valid_agents() -> None:
    message = config_error(["agent.name=dqn"])
    assert "'dqn'" in message
    for name in ("ppo", "reinforce", "sac"):
        assert name in message


def test_missing_agent_name(tmp_path: Path) -> None:
    path = tmp_path / "noagent.yaml"
    path.write_text("total_steps: 10\n")
    message = config_error([], path=path)
    assert "agent.name" in message


def test_missing_required_key(tmp_path: Path) -> None:
    path = tmp_path / "nosteps.yaml"
    path.write_text("agent:\n  name: sac\n")
    message = config_error([], path=path)
    assert "total_steps" in message and "missing" in message


@pytest.mark.parametrize(
    ("override", "key", "choices"),
    [
        ("learner.device=tpu", "learner.device", ("'auto'", "'cpu'", "'cuda'")),
        ("logging.wandb=maybe", "logging.wandb", ("'auto'", "'offline'", "'online'", "'disabled'")),
        ("agent.actor_estimator=reinforce", "agent.actor_estimator", ("'pathwise'", "'score'")),
        ("env.vectorization=threads", "env.vectorization", ("'sync'", "'async'")),
    ],
)
def test_bad_literal_names_the_choices(override: str, key: str, choices: tuple[str, ...]) -> None:
    message = config_error([override])
    assert key in message
    assert override.split("=", 1)[1] in message
    for choice in choices:
        assert choice in message


def test_cross_field_check() -> None:
    message = config_error(["agent.log_std_min=3", "agent.log_std_max=2"])
    assert "log_std_min" in message


# ---- round trip through the resolved YAML ---------------------------------------------------


def positive_floats(max_value: float | None = None) -> st.SearchStrategy[float | int]:
    return st.one_of(
        st.integers(1, 1000) if max_value is None else st.just(1),
        st.floats(
            min_value=0.0,
            max_value=max_value,
            exclude_min=True,
            allow_nan=False,
            allow_infinity=False,
        ),
    )


NUMERIC_KEYS: dict[str, tuple[st.SearchStrategy, type]] = {
    "agent.batch_size": (st.integers(1, 10**6), int),
    "agent.buffer_size": (st.integers(1, 10**12), int),
    "total_steps": (st.integers(1, 10**15), int),
    "seed": (st.integers(0, 2**63), int),
    "logging.interval": (st.integers(1, 10**9), int),
    "agent.learning_rate": (positive_floats(), float),
    "agent.tau": (positive_floats(max_value=1.0), float),
    "agent.gamma": (st.floats(0.0, 1.0), float),
    "env.clip_obs": (positive_floats(), float),
    "agent.ent_coef_init": (positive_floats(), float),
}


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    values=st.fixed_dictionaries(
        {}, optional={key: strategy for key, (strategy, _) in NUMERIC_KEYS.items()}
    )
)
def test_overrides_round_trip_through_yaml(tmp_path: Path, values: dict[str, float | int]) -> None:
    overrides = [f"{key}={value!r}" for key, value in values.items()]
    cfg = load_config(SAC_PENDULUM, overrides)
    for key, value in values.items():
        section, _, leaf = key.rpartition(".")
        got = getattr(getattr(cfg, section) if section else cfg, leaf)
        assert got == value, f"{key}: {got!r} != {value!r}"
        assert type(got) is NUMERIC_KEYS[key][1], f"{key}: {type(got).__name__}"

    resolved = tmp_path / "config.yaml"
    resolved.write_text(to_yaml(cfg))
    again = load_config(resolved)
    assert again == cfg
    assert to_yaml(again) == to_yaml(cfg)
