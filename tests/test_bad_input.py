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
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import gymnasium as gym
import pytest
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
    assert "pass the path of a YAML config, e.g. configs/sac_pendulum.yaml" in line


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
def test_discrete_action_space(cli: Cli, existing_run: Path, overwrite: bool) -> None:
    line = refused_config(cli, existing_run, overwrite, "env.id=CartPole-v1")
    assert "env 'CartPole-v1' has a Discrete action space" in line
    assert "choose a continuous-control env, e.g. env.id=Pendulum-v1" in line


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
    assert len(in_table) == len(set(in_table)) == 12
    assert sorted(in_table) == here
