"""Custom envs: ``env.id=module:EnvName-v0`` (Gymnasium's import-then-make form) and
``env.wrappers`` (wrappers of ``gymnasium.wrappers`` applied in order to each sub-env)."""

from __future__ import annotations

import json
import secrets
import textwrap
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import SAC_PENDULUM, TINY_OVERRIDES, CliResult, assert_one_line_error
from gymnasium.vector import VectorWrapper

import rlgrad
from rlgrad.checkpoint import load_checkpoint
from rlgrad.config import ConfigError, EnvConfig
from rlgrad.env_state import EpisodeRecorder
from rlgrad.envs import make_env

Cli = Callable[..., CliResult]
DICT_ENV = "rlgrad_test/DictCorridor-v0"


class DictCorridor(gym.Env):
    """x on [-5, 5] moved by 0.5 a; observation {"x": x, "goal": 0}; reward -|x|."""

    def __init__(self) -> None:
        box = gym.spaces.Box(-5.0, 5.0, (1,), np.float32)
        self.observation_space = gym.spaces.Dict({"x": box, "goal": box})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.x = np.zeros(1, np.float32)

    def _obs(self) -> dict[str, np.ndarray]:
        return {"x": self.x.copy(), "goal": np.zeros(1, np.float32)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-4.0, 4.0, (1,)).astype(np.float32)
        return self._obs(), {}

    def step(self, action):
        self.x = np.clip(self.x + 0.5 * np.asarray(action, np.float32), -5.0, 5.0)
        return self._obs(), -float(abs(self.x[0])), False, False, {}


if DICT_ENV not in gym.registry:
    gym.register(DICT_ENV, entry_point=DictCorridor, max_episode_steps=25)

MODULE_SOURCE = """
import gymnasium as gym
import numpy as np


class Corridor(gym.Env):
    def __init__(self):
        self.observation_space = gym.spaces.Box(-5.0, 5.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-4.0, 4.0, (1,)).astype(np.float32)
        return self.x.copy(), {}

    def step(self, action):
        self.x = np.clip(self.x + 0.5 * np.asarray(action, np.float32), -5.0, 5.0)
        return self.x.copy(), -float(abs(self.x[0])), False, False, {}


gym.register("{env}", entry_point=Corridor, max_episode_steps=30)
"""


def _train(cli: Cli, run_dir: Path, *overrides: str) -> CliResult:
    return cli("train", SAC_PENDULUM, *TINY_OVERRIDES, *overrides, "--quiet", "--run-dir", run_dir)


def test_env_id_in_module_colon_id_form_trains(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module that registers its env when imported, named in env.id: rlgrad imports it."""
    module = f"my_envs_{secrets.token_hex(4)}"  # fresh: nothing imported or registered yet
    env_name = f"Corridor{secrets.token_hex(2)}-v0"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(MODULE_SOURCE).replace("{env}", env_name)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    env_id = f"{module}:{env_name}"
    code, out, err = _train(cli, tmp_path / "run", f"env.id={env_id}")
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["global_step"] == 300
    assert -30 * 5.0 <= result["eval_return_mean"] <= 0.0  # 30 steps of -|x|, |x| <= 5
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert checkpoint["env_id"] == env_id
    policy = rlgrad.load(tmp_path / "run")
    assert policy.env_id == env_id and policy.obs_shape == (1,)
    assert policy.predict(np.array([2.0], np.float32)).shape == (1,)


def test_env_id_naming_a_missing_module_is_one_line(cli: Cli, tmp_path: Path) -> None:
    code, out, err = _train(cli, tmp_path / "run", "env.id=no_such_module_xyz:Corridor-v0")
    assert code == 2 and out == ""
    assert_one_line_error(
        err, "env 'no_such_module_xyz:Corridor-v0': cannot import module 'no_such_module_xyz'"
    )
    assert not (tmp_path / "run").exists()


def test_dict_observation_needs_flattening_and_env_wrappers_does_it(
    cli: Cli, tmp_path: Path
) -> None:
    code, out, err = _train(cli, tmp_path / "refused", f"env.id={DICT_ENV}")
    assert code == 2
    assert_one_line_error(err, "has observation space Dict(", "env.wrappers=[FlattenObservation]")

    run = tmp_path / "run"
    code, out, err = _train(cli, run, f"env.id={DICT_ENV}", "env.wrappers=[FlattenObservation]")
    assert code == 0, err
    assert json.loads((run / "result.json").read_text())["global_step"] == 300
    actor = load_checkpoint(run / "checkpoints" / "latest.pt")["agent"]["actor"]
    first_layer = next(v for k, v in actor.items() if k.endswith("weight"))
    assert first_layer.shape[1] == 2  # {"x": (1,), "goal": (1,)} flattened

    policy = rlgrad.load(run)
    assert policy.obs_shape == (2,)
    raw, _ = DictCorridor().reset(seed=0)
    flat = gym.spaces.flatten(DictCorridor().observation_space, raw)
    np.testing.assert_array_equal(policy.predict(raw), policy.predict(flat))


def _sub_env_chain(envs: gym.vector.VectorEnv, index: int) -> list[type]:
    """The wrapper classes around sub-env ``index``, outermost first, down to the env."""
    while isinstance(envs, VectorWrapper):
        envs = envs.env
    env, chain = envs.envs[index], []
    while isinstance(env, gym.Wrapper):
        chain.append(type(env))
        env = env.env
    return [*chain, type(env)]


@pytest.mark.filterwarnings("ignore:.*precision lowered by casting:UserWarning")
def test_wrappers_apply_in_order_to_each_sub_env() -> None:
    rescale = {"RescaleObservation": {"min_obs": -1.0, "max_obs": 1.0}}
    cfg = EnvConfig(id=DICT_ENV, n_envs=2, wrappers=["FlattenObservation", rescale])
    envs = make_env(cfg, seed=5)
    try:
        obs, _ = envs.reset(seed=5)
        assert obs.shape == (2, 2)
        for i in range(2):
            raw, _ = DictCorridor().reset(seed=5 + i)
            flat = gym.spaces.flatten(DictCorridor().observation_space, raw)
            np.testing.assert_allclose(obs[i], flat / 5.0, rtol=1e-6)  # [-5, 5] → [-1, 1]
            chain = _sub_env_chain(envs, i)
            names = [c.__name__ for c in chain]
            # Innermost first: FlattenObservation, then RescaleObservation, then rlgrad's own.
            assert names.index("RescaleObservation") < names.index("FlattenObservation")
            assert chain.index(EpisodeRecorder) < names.index("RescaleObservation")
    finally:
        envs.close()
    # The other order cannot work: RescaleObservation needs the flat Box first.
    with pytest.raises(ConfigError, match="env.wrappers: RescaleObservation cannot wrap the env"):
        make_env(EnvConfig(id=DICT_ENV, wrappers=[rescale, "FlattenObservation"]), seed=0)
