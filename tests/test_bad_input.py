"""Bad input, one test per row of the README's "Bad input" table.

Every row is tried through the ``rlgrad`` command as a user would type it, and must end the same
way: exit code 2, nothing on stdout, exactly one stderr line ``rlgrad: error: …`` that names what
is wrong and says what to do, and the run directory byte-for-byte as it was (even when
``--overwrite`` is given, a rejected command overwrites nothing).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import gymnasium as gym
import pytest
import torch
import yaml
from conftest import (
    CONFIGS,
    SAC_PENDULUM,
    CliResult,
    assert_one_line_error,
    run_tiny_training,
    snapshot,
)

from rlgrad.checkpoint import load_checkpoint

Cli = Callable[..., CliResult]
CHECKPOINT = Path("checkpoints") / "latest.pt"


def refused(cli: Cli, run_dir: Path, *args: str | Path) -> str:
    """``rlgrad ARGS`` must exit 2 with one error line and leave ``run_dir`` untouched."""
    before = snapshot(run_dir)
    assert before, "the run directory should hold files for the check to mean something"
    code, out, err = cli(*args)
    assert code == 2, (code, err)
    assert out == ""
    line = assert_one_line_error(err)
    assert snapshot(run_dir) == before, "a refused command changed the run directory"
    return line


def cli_subprocess(cwd: Path, *args: str | Path) -> CliResult:
    """``python -m rlgrad.cli ARGS`` in a fresh process started in ``cwd``."""
    proc = subprocess.run(
        [sys.executable, "-m", "rlgrad.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    return proc.returncode, proc.stdout, proc.stderr


def refused_config(cli: Cli, existing_run: Path, overwrite: bool, *overrides: str) -> str:
    """``rlgrad train sac_pendulum.yaml OVERRIDES --run-dir EXISTING [--overwrite]``, refused."""
    flags = ["--quiet", "--run-dir", str(existing_run), *(["--overwrite"] if overwrite else [])]
    return refused(cli, existing_run, "train", SAC_PENDULUM, *overrides, *flags)


def _has_command_option(command: str, option: str) -> bool:
    from rlgrad.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = commands.choices.get(command)
    return sub is not None and option in sub._option_string_actions


def _has_resume() -> bool:
    """Whether ``rlgrad train --resume RUN_DIR`` exists yet."""
    return _has_command_option("train", "--resume")


needs_resume = pytest.mark.skipif(
    not _has_resume(), reason="rlgrad train --resume RUN_DIR is not implemented yet"
)

# Each config row is tried with and without --overwrite: neither may touch the run directory.
overwrite = pytest.mark.parametrize("overwrite", [False, True], ids=["", "overwrite"])


# ---- the config -----------------------------------------------------------------------------


@overwrite
def test_unknown_config_key(cli: Cli, existing_run: Path, overwrite: bool) -> None:
    line = refused_config(cli, existing_run, overwrite, "agent.batch_sise=512")
    assert "unknown config key 'agent.batch_sise'" in line
    assert "did you mean 'agent.batch_size'?" in line
    assert "valid keys here: actor_estimator, batch_size, buffer_size," in line


@overwrite
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("agent.batch_size=abc", "config key 'agent.batch_size' should be a valid integer"),
        # A union: one message for the key (not 'agent.ent_coef.float'), naming both choices.
        ("agent.ent_coef=abc", "config key 'agent.ent_coef' should be a valid number or 'auto'"),
        ("agent.hidden_sizes=[64,abc]", "config key 'agent.hidden_sizes[1]' should be a valid"),
    ],
)
def test_wrong_type(
    cli: Cli, existing_run: Path, overwrite: bool, override: str, expected: str
) -> None:
    line = refused_config(cli, existing_run, overwrite, override)
    assert expected in line
    assert line.endswith("(got 'abc')")
    assert ".float" not in line and "literal[" not in line


@overwrite
def test_missing_config_file(cli: Cli, existing_run: Path, tmp_path: Path, overwrite: bool) -> None:
    missing = tmp_path / "nope.yaml"
    flags = ["--run-dir", str(existing_run), *(["--overwrite"] if overwrite else [])]
    line = refused(cli, existing_run, "train", missing, *flags)
    assert f"config file not found: {missing}" in line
    assert "give a shipped config's name or the path of a YAML file" in line
    assert "configs/sac_pendulum.yaml" not in line  # no path that fails from another folder
    # A name close to a shipped one suggests it (from any folder: the configs ship with rlgrad).
    line = refused(cli, existing_run, "train", "sac_pendulm", *flags)
    assert "config file not found: sac_pendulm; did you mean sac_pendulum, " in line


MALFORMED_HINT = "expected KEY=VALUE with a dotted key, e.g. agent.batch_size=512"


@overwrite
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("agent.lr", ("malformed override 'agent.lr'", MALFORMED_HINT)),
        ("=3", ("malformed override '=3'", MALFORMED_HINT)),
        (
            "agent.hidden_sizes=[64,",
            (
                "bad override 'agent.hidden_sizes=[64,': its value is not valid YAML",
                "fix or quote the value, e.g. agent.hidden_sizes=[64,64]",
            ),
        ),
    ],
)
def test_malformed_override(
    cli: Cli, existing_run: Path, overwrite: bool, override: str, expected: tuple[str, ...]
) -> None:
    line = refused_config(cli, existing_run, overwrite, override)
    for fragment in expected:
        assert fragment in line


@overwrite
@pytest.mark.parametrize("steps", ["0", "-5"])
def test_nonpositive_total_steps(cli: Cli, existing_run: Path, overwrite: bool, steps: str) -> None:
    line = refused_config(cli, existing_run, overwrite, f"total_steps={steps}")
    assert f"config key 'total_steps' should be greater than 0 (got {steps})" in line


# ---- the environment ------------------------------------------------------------------------


@overwrite
def test_unknown_env_id(cli: Cli, existing_run: Path, overwrite: bool) -> None:
    line = refused_config(cli, existing_run, overwrite, "env.id=NoSuchEnv-v0")
    assert "unknown env id 'NoSuchEnv-v0'" in line
    assert "list the registered ids with" in line and "gymnasium.pprint_registry()" in line


@overwrite
@pytest.mark.parametrize(
    ("config", "env_id", "expected"),
    [
        pytest.param(
            SAC_PENDULUM,
            "CartPole-v1",
            "env 'CartPole-v1' has Discrete actions and agent 'sac' needs continuous (Box) "
            "actions; agents for Discrete actions: ppo, reinforce, sac_discrete",
            id="discrete-env-to-sac",
        ),
        pytest.param(
            CONFIGS / "sac_discrete_cartpole.yaml",
            "Pendulum-v1",
            "env 'Pendulum-v1' has continuous (Box) actions and agent 'sac_discrete' needs "
            "Discrete actions; agents for continuous (Box) actions: ppo, reinforce, sac",
            id="box-env-to-sac_discrete",
        ),
    ],
)
def test_action_space_the_agent_does_not_take(
    cli: Cli, existing_run: Path, overwrite: bool, config: Path, env_id: str, expected: str
) -> None:
    flags = ["--quiet", "--run-dir", str(existing_run), *(["--overwrite"] if overwrite else [])]
    line = refused(cli, existing_run, "train", config, f"env.id={env_id}", *flags)
    assert line == f"rlgrad: error: {expected}"


class _MultiDiscreteEnv(gym.Env):
    """An env whose actions no rlgrad agent takes (two discrete choices at once)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,))
    action_space = gym.spaces.MultiDiscrete([2, 3])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


MULTI_DISCRETE_ENV = "rlgrad/TestMultiDiscrete-v0"


@pytest.fixture
def multi_discrete_env() -> Iterator[str]:
    gym.register(MULTI_DISCRETE_ENV, entry_point=_MultiDiscreteEnv)
    yield MULTI_DISCRETE_ENV
    del gym.registry[MULTI_DISCRETE_ENV]


@overwrite
def test_action_space_no_agent_takes(
    cli: Cli, existing_run: Path, overwrite: bool, multi_discrete_env: str
) -> None:
    line = refused_config(cli, existing_run, overwrite, f"env.id={multi_discrete_env}")
    assert f"env '{multi_discrete_env}' has action space MultiDiscrete([2 3])" in line
    assert "rlgrad's agents take a continuous (Box) or a Discrete action space" in line
    assert "e.g. env.id=Pendulum-v1 or env.id=CartPole-v1" in line


FAKE_ENV = "rlgrad/TestNeedsFooSim-v0"


def _needs_foosim(**kwargs):
    raise gym.error.DependencyNotInstalled("FooSim is not installed")


@pytest.fixture
def env_missing_a_package() -> Iterator[str]:
    """An env id whose creator raises what gymnasium raises for a missing optional package."""
    gym.register(FAKE_ENV, entry_point=_needs_foosim)
    yield FAKE_ENV
    del gym.registry[FAKE_ENV]


@overwrite
@pytest.mark.parametrize(
    ("env_id", "expected"),
    [
        pytest.param(
            "LunarLanderContinuous-v3",
            'pip install "gymnasium[box2d]"',
            id="box2d",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("Box2D") is not None, reason="Box2D is installed"
            ),
        ),
        pytest.param(FAKE_ENV, "FooSim is not installed; install the package", id="fake"),
    ],
)
def test_env_needing_a_missing_package(
    cli: Cli,
    existing_run: Path,
    env_missing_a_package: str,
    overwrite: bool,
    env_id: str,
    expected: str,
) -> None:
    line = refused_config(cli, existing_run, overwrite, f"env.id={env_id}")
    assert f"env '{env_id}' needs a package that is not installed" in line
    assert expected in line
    assert "unknown env id" not in line


# ---- values the schema accepts but the run cannot be built from -----------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (  # once refused only when torch built the network; now by the schema
            "agent.hidden_sizes=[-1]",
            ("config key 'agent.hidden_sizes[0]' should be greater than 0 (got -1)",),
        ),
        pytest.param(
            "learner.device=cuda",
            ("learner.device=cuda but no CUDA device is available", "use auto or cpu"),
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is available"),
            id="cuda-without-a-gpu",
        ),
    ],
)
def test_value_rejected_when_building(
    cli: Cli, existing_run: Path, override: str, expected: tuple[str, ...]
) -> None:
    """The run is built before --overwrite empties the directory (without --overwrite the
    occupied directory is refused first)."""
    line = refused_config(cli, existing_run, True, override)
    for fragment in expected:
        assert fragment in line


@overwrite
def test_env_kwarg_the_env_rejects(cli: Cli, existing_run: Path, overwrite: bool) -> None:
    line = refused_config(cli, existing_run, overwrite, "env.kwargs={g: abc}")
    assert "env 'Pendulum-v1' fails with env.kwargs {'g': 'abc'}: TypeError" in line
    assert "fix or remove those env.kwargs" in line


# ---- the run directory ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["in_process", "subprocess_mujoco"])
def test_run_dir_holding_another_run(
    cli: Cli, existing_run: Path, tmp_path: Path, how: str
) -> None:
    """Also once as a separate process on a MuJoCo task, where stderr is read at the file
    descriptor: MuJoCo's model compiler would print its own warnings there."""
    if how == "in_process":
        line = refused(
            cli, existing_run, "train", SAC_PENDULUM, "--quiet", "--run-dir", existing_run
        )
    else:
        line = refused(
            functools.partial(cli_subprocess, tmp_path),
            existing_run,
            "train",
            CONFIGS / "sac_halfcheetah.yaml",
            "--run-dir",
            existing_run,
        )
    assert f"run directory {existing_run} already holds a run" in line
    assert "pass --overwrite to replace it" in line and "choose another --run-dir" in line
    if _has_resume():
        assert f"continue it with rlgrad train --resume {existing_run}" in line


def test_run_dir_that_is_a_file(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a run directory")
    line = refused(cli, tmp_path, "train", SAC_PENDULUM, "--quiet", "--run-dir", path)
    assert f"--run-dir {path} is a file, not a directory" in line


# ---- resuming from a checkpoint -------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SAC run on Pendulum-v1 with its final checkpoint (copy it before changing it)."""
    run_dir = tmp_path_factory.mktemp("bad_input") / "sac"
    code, _, err = run_tiny_training(run_dir, "total_steps=60", "eval.episodes=1")
    assert code == 0, err
    return run_dir


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def normalised_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``finished_run``, with observation normalisation."""
    run_dir = tmp_path_factory.mktemp("bad_input") / "sac-normalised"
    code, _, err = run_tiny_training(
        run_dir, "total_steps=60", "eval.episodes=1", "env.normalize_obs=true"
    )
    assert code == 0, err
    return run_dir


@needs_resume
def test_read_only_run_dir(cli: Cli, run_copy: Path) -> None:
    """A run directory nothing can be written into (for root, which ignores permissions: the
    immutable attribute)."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("needs chattr to make a directory read-only for root")
        if subprocess.run(["chattr", "+i", run_copy], capture_output=True).returncode != 0:
            pytest.skip("the filesystem does not support the immutable attribute")
        undo = ["chattr", "-i", run_copy]
    else:
        run_copy.chmod(0o555)
        undo = ["chmod", "755", run_copy]
    try:
        line = refused(cli, run_copy, "train", "--resume", run_copy, "total_steps=100", "--quiet")
    finally:
        subprocess.run(undo, check=True)
    assert f"cannot use {run_copy / '.lock'}:" in line
    assert "check that the path exists and is writable" in line


@needs_resume
def test_resume_with_deleted_metrics(cli: Cli, run_copy: Path) -> None:
    (run_copy / "metrics.jsonl").unlink()
    line = refused(cli, run_copy, "train", "--resume", run_copy, "total_steps=100", "--quiet")
    assert f"{run_copy / 'metrics.jsonl'} is missing, but its checkpoint recorded" in line
    assert "--overwrite" in line


@needs_resume
@pytest.mark.parametrize("total_steps", ["30", "60", None], ids=["lowered", "equal", "unchanged"])
def test_resume_lowering_total_steps_or_of_a_finished_run(
    cli: Cli, run_copy: Path, total_steps: str | None
) -> None:
    """Only a raised total_steps continues a run; a finished run (result.json) resumed without
    one has nothing to do."""
    extra = [f"total_steps={total_steps}"] if total_steps else []
    line = refused(cli, run_copy, "train", "--resume", run_copy, *extra, "--quiet")
    if total_steps == "30":
        assert f"total_steps can only be raised when resuming: {run_copy} was set to" in line
        assert "train 60 steps, got total_steps=30" in line
    else:
        assert f"{run_copy} has finished: it trained 60 steps" in line
        assert f"rlgrad train --resume {run_copy} total_steps=120" in line


@needs_resume
def test_resume_after_config_yaml_was_edited(cli: Cli, run_copy: Path) -> None:
    """config.yaml changed since the checkpoint was written (even with a raised total_steps)."""
    config = run_copy / "config.yaml"
    text = config.read_text()
    edited = text.replace("batch_size: 32", "batch_size: 64").replace("tau: 0.005", "tau: 0.01")
    assert "batch_size: 64" in edited and "tau: 0.01" in edited
    config.write_text(edited)
    line = refused(cli, run_copy, "train", "--resume", run_copy, "total_steps=100", "--quiet")
    assert f"{config} differs from the config its checkpoint was written with" in line
    assert "agent.batch_size (32 in the checkpoint, 64 now)" in line
    assert "agent.tau (0.005 in the checkpoint, 0.01 now)" in line
    assert "resuming may only raise total_steps" in line


@pytest.mark.parametrize("direction", ["stats_missing", "stats_unwanted"])
def test_eval_checkpoint_without_normaliser_statistics(
    cli: Cli, finished_run: Path, normalised_run: Path, direction: str
) -> None:
    """``rlgrad eval RUN --checkpoint OTHER`` where one normalises observations and the other
    does not: the policy would see observations of another scale."""
    if direction == "stats_missing":
        run, other = normalised_run, finished_run / CHECKPOINT
        expected = "holds no observation-normaliser statistics, but"
    else:
        run, other = finished_run, normalised_run / CHECKPOINT
        expected = "was trained on normalised observations, but"
    line = refused(cli, run, "eval", run, "--checkpoint", other, "--episodes", "1")
    assert f"{other} {expected} {run / 'config.yaml'}" in line
    assert "evaluate it with the run directory it came from" in line


@needs_resume
@pytest.mark.parametrize("kind", ["no_checkpoint", "empty_dir"])
def test_resume_without_a_checkpoint(cli: Cli, run_copy: Path, kind: str) -> None:
    (run_copy / CHECKPOINT).unlink()
    if kind == "empty_dir":  # only a stray file: not a run directory at all
        for path in [p for p in run_copy.iterdir() if p.name != "metrics.jsonl"]:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    line = refused(cli, run_copy, "train", "--resume", run_copy, "--quiet")
    if kind == "no_checkpoint":
        assert f"{run_copy} has no checkpoint" in line
        assert "--overwrite" in line
    else:
        assert f"{run_copy} is not a run directory (no config.yaml)" in line
        assert "give the directory a run was started in" in line


@needs_resume
@pytest.mark.parametrize("damage", ["truncated", "empty", "zeroed"])
def test_corrupt_or_truncated_checkpoint(cli: Cli, run_copy: Path, damage: str) -> None:
    path = run_copy / CHECKPOINT
    data = path.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "empty": b"", "zeroed": bytes(len(data))}
    path.write_bytes(damaged[damage])
    line = refused(cli, run_copy, "train", "--resume", run_copy, "--quiet")
    assert f"{path} is corrupt or truncated" in line
    assert "restore an earlier copy" in line and "--overwrite" in line


@pytest.mark.parametrize(
    "command",
    [
        pytest.param("resume", marks=needs_resume),
        pytest.param(
            "eval",
            marks=pytest.mark.skipif(
                not _has_command_option("eval", "--checkpoint"),
                reason="rlgrad eval RUN_DIR --checkpoint PATH is not implemented yet",
            ),
        ),
    ],
)
@pytest.mark.parametrize("other", ["agent", "env"])
def test_checkpoint_from_another_agent_or_env(
    cli: Cli, run_copy: Path, other: str, command: str
) -> None:
    """The run directory's config.yaml trains one thing, the checkpoint holds another (SAC on
    Pendulum-v1): resumed in place, or evaluated with ``--checkpoint``."""
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    if other == "env":
        config["env"]["id"] = "InvertedPendulum-v5"
        other_run = ("sac", "InvertedPendulum-v5")
    else:
        config = {**yaml.safe_load((CONFIGS / "ppo_pendulum.yaml").read_text()), "seed": 0}
        other_run = ("ppo", "Pendulum-v1")
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config))
    assert load_checkpoint(run_copy / CHECKPOINT)["agent_name"] == "sac"
    if command == "resume":
        line = refused(cli, run_copy, "train", "--resume", run_copy, "--quiet")
        assert "was written by agent sac on Pendulum-v1" in line
        assert f"trains {other_run[0]} on {other_run[1]}" in line
        assert "use the run directory it came from" in line
    else:
        line = refused(cli, run_copy, "eval", run_copy, "--checkpoint", run_copy / CHECKPOINT)
        assert str(run_copy / CHECKPOINT) in line
        assert "sac" in line and "Pendulum-v1" in line
        assert other_run[0] in line and other_run[1] in line


def test_readme_table_has_one_row_per_test() -> None:
    """The README's "Bad input" table and this module name the same tests, once each."""
    readme = (CONFIGS.parent / "README.md").read_text()
    section = readme.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`test_" in line]
    in_table = [re.findall(r"`(test_\w+)`", row)[-1] for row in rows]
    here = sorted(
        name
        for name in globals()
        if name.startswith("test_") and name != "test_readme_table_has_one_row_per_test"
    )
    assert len(in_table) == len(set(in_table)) == 23
    assert sorted(in_table) == here


@overwrite
def test_unknown_wrapper(cli: Cli, existing_run: Path, overwrite: bool) -> None:
    line = refused_config(cli, existing_run, overwrite, "env.wrappers=[FlattenObs]")
    assert "config key 'env.wrappers': unknown wrapper 'FlattenObs'" in line
    assert "(did you mean 'FlattenObservation'?)" in line
    assert "env.wrappers takes class names from gymnasium.wrappers: " in line
    assert "ClipAction" in line and line.endswith("(got ['FlattenObs'])")


def test_python_api_load_and_predict_bad_input(tmp_path: Path) -> None:
    """``rlgrad.load`` on a folder without a run, ``predict`` with a wrongly shaped observation:
    one-line exceptions for the caller (no exit code: this is the Python API)."""
    import numpy as np

    import rlgrad
    from rlgrad.errors import UsageError

    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError) as caught:
        rlgrad.load(tmp_path / "empty")
    assert "holds no run (no config.yaml)" in str(caught.value)
    assert "\n" not in str(caught.value)
    code, _, err = run_tiny_training(tmp_path / "run")
    assert code == 0, err
    policy = rlgrad.load(tmp_path / "run")
    with pytest.raises(ValueError) as caught:
        policy.predict(np.zeros(5, dtype=np.float32))
    assert "takes shape (3,) (or a batch (n, 3))" in str(caught.value)
    assert "\n" not in str(caught.value)
