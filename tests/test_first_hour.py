"""A user's first hour: configs found by name, ``rlgrad configs``, ``rlgrad keys``,
``--print-config``, a fast and plain ``--help``, ``--version``, forgiving overrides (``1e6`` for
an integer, synonyms), and run directories named after agent, env and seed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, REPO, TINY_OVERRIDES, CliResult, assert_one_line_error

from rlgrad.agents import AGENT_NAMES, agent_spec
from rlgrad.commands.train import default_run_dir
from rlgrad.config import ConfigError, RunConfig, load_config, shipped_configs

Cli = Callable[..., CliResult]
SHIPPED = sorted(p.stem for p in CONFIGS.glob("*.yaml"))


# ---- configs by name ---------------------------------------------------------------------------


def test_shipped_configs_are_the_repository_folder() -> None:
    assert sorted(shipped_configs()) == SHIPPED
    assert {p.resolve() for p in shipped_configs().values()} == {
        p.resolve() for p in CONFIGS.glob("*.yaml")
    }
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"rlgrad.configs" = "configs"' in pyproject  # configs/ is installed as rlgrad.configs
    assert '"rlgrad.configs" = ["*.yaml", "compare/*.yaml"]' in pyproject


def test_train_by_name_from_any_folder_into_a_named_run_dir(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ here
    code, out, err = cli("train", "sac_pendulum", *TINY_OVERRIDES, "seed=2", "--quiet")
    assert code == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"sac-Pendulum-v1-s2-\d{8}-\d{6}-[0-9a-f]{4}", run_dir.name)
    assert json.loads((run_dir / "result.json").read_text())["global_step"] == 300
    assert f"run directory runs/{run_dir.name}" in out


@pytest.mark.parametrize(
    ("given", "suggested"),
    [
        ("sac_pendulm", "did you mean sac_pendulum, "),
        ("ppo_pendlum.yaml", "did you mean ppo_pendulum"),
        ("configs/sac_invpendulum.yaml", "did you mean sac_invpendulum"),
        ("zzzz", "shipped configs: " + ", ".join(SHIPPED)),
    ],
)
def test_a_missing_config_suggests_shipped_names(
    given: str, suggested: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config(given)
    message = str(caught.value)
    assert message.startswith(f"config file not found: {given}; {suggested}")
    assert message.endswith("(rlgrad configs lists the shipped ones)")
    assert "e.g. configs/" not in message  # never the kind of path that just failed


def test_a_name_and_a_path_give_the_same_config() -> None:
    assert load_config("ppo_pendulum") == load_config(CONFIGS / "ppo_pendulum.yaml")
    assert load_config("ppo_pendulum.yaml") == load_config(CONFIGS / "ppo_pendulum.yaml")


def test_configs_lists_every_shipped_config_with_agent_and_env(cli: Cli) -> None:
    code, out, err = cli("configs")
    assert code == 0 and err == ""
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    for name in SHIPPED:
        data = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        env = data.get("env", {}).get("id", "Pendulum-v1")
        assert rows[name][1:3] == [data["agent"]["name"], env], rows[name]
        assert rows[name][3] == f"{data['total_steps']:,}"
    assert out.splitlines()[0].split() == ["name", "agent", "env", "total_steps"]


def test_print_config_prints_the_resolved_config_and_exits(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    overrides = ("total_steps=1e6", "agent.n_steps=64", "env.n_envs=2", "seed=4")
    code, out, err = cli("train", "ppo_pendulum", *overrides, "--print-config")
    assert code == 0 and err == ""
    printed = yaml.safe_load(out)
    assert printed["total_steps"] == 1_000_000
    assert printed["agent"]["n_steps"] == 64 and printed["env"]["n_envs"] == 2
    assert printed["agent"]["learning_rate"] == 1e-3  # from the shipped file
    assert printed["eval"]["episodes"] == 10  # a schema default, not in the file
    assert RunConfig[agent_spec("ppo").config].model_validate(printed) == load_config(
        "ppo_pendulum", list(overrides)
    )
    assert list(tmp_path.iterdir()) == []  # nothing written


# ---- rlgrad keys -------------------------------------------------------------------------------


def _leaf_keys(model: type, prefix: str = "") -> list[str]:
    from pydantic import BaseModel

    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _leaf_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


@pytest.mark.parametrize("agent", AGENT_NAMES)
def test_keys_lists_every_key_with_type_and_default(cli: Cli, agent: str) -> None:
    code, out, err = cli("keys", agent)
    assert code == 0 and err == ""
    listed = [line.split(":")[0] for line in out.splitlines() if re.match(r"^[a-z_.]+: ", line)]
    expected = _leaf_keys(RunConfig[agent_spec(agent).config])
    assert sorted(listed) == sorted(expected)
    assert len(listed) == len(set(listed))
    assert out.rstrip().endswith(
        f"{len(expected)} keys; set any with rlgrad train CONFIG KEY=VALUE"
    )


def test_keys_show_types_defaults_and_docstrings(cli: Cli) -> None:
    out = cli("keys", "sac")[1]
    lines = out.splitlines()
    assert "agent.batch_size: int = 256" in lines
    assert re.search(r"^agent\.actor_estimator: pathwise\|score(\|\w+)* = pathwise$", out, re.M)
    assert "agent.ent_coef: float | auto = auto" in lines
    assert "agent.hidden_sizes: list[int] = [256, 256]" in lines
    assert "total_steps: int = required" in lines
    assert "logging.entity: str | null = null" in lines
    doc = lines[lines.index("env.rescale_actions: bool = true") + 1]
    assert (
        doc
        == "    Present the action space to the agent as [-1, 1]^d and rescale to the env's bounds."
    )
    doc = lines[lines.index("agent.score_samples: int = 8") + 1]
    assert doc.strip() == "K: actions drawn per state by the score-function estimator."
    assert "``" not in out
    # Every choice of a Literal key, as the schema has them (the agents' own field order).
    baseline = agent_spec("reinforce").config.model_fields["baseline"]
    choices = "|".join(typing.get_args(baseline.annotation))
    assert choices.startswith("none|mean|value|gae")
    reinforce = cli("keys", "reinforce")[1].splitlines()
    assert f"agent.baseline: {choices} = {baseline.default}" in reinforce


def test_keys_of_an_unknown_agent_is_one_line(cli: Cli) -> None:
    code, out, err = cli("keys", "dqn")
    assert code == 2 and out == ""
    expected = "unknown agent 'dqn'; valid agents: ppo, reinforce, sac, sac_discrete"
    assert_one_line_error(err, expected)


# ---- the command's start-up --------------------------------------------------------------------

HELP_PROBE = """
import contextlib, io, json, sys, time
from rlgrad.cli import main
started = time.perf_counter()
texts = {}
for argv in %s:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit:
            pass
    texts[" ".join(argv)] = out.getvalue()
heavy = [m for m in ("torch", "gymnasium", "pydantic", "omegaconf", "yaml", "numpy", "wandb")
         if m in sys.modules]
print(json.dumps({"texts": texts, "heavy": heavy, "seconds": time.perf_counter() - started}))
"""
COMMANDS = ("train", "eval", "compare", "report", "configs", "keys")


def test_help_imports_nothing_heavy_and_has_no_markup() -> None:
    argvs = [["--help"], *[[c, "--help"] for c in COMMANDS]]
    proc = subprocess.run(
        [sys.executable, "-c", HELP_PROBE % argvs], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    probe = json.loads(proc.stdout)
    assert probe["heavy"] == []  # torch & co. load only when a command runs
    main_help = probe["texts"]["--help"]
    for command in COMMANDS:
        assert re.search(rf"^    {command}\s+\S", main_help, re.M), command  # one plain line each
        text = probe["texts"][f"{command} --help"]
        assert text.startswith(f"usage: rlgrad {command}")
        assert len(text.split("\n\n")[1].strip()) > 20  # a description
    for argv, text in probe["texts"].items():
        for markup in ("``", ":mod:", ":class:", ":func:", ":meth:"):
            assert markup not in text, (argv, markup)


def test_help_is_fast() -> None:
    """``rlgrad --help`` in a fresh process: well under half a second on an idle machine; the
    bound here is loose, for shared CI machines."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "rlgrad.cli", "--help"], capture_output=True, check=True
        )
        times.append(time.perf_counter() - started)
    assert min(times) < 1.5, times


def test_version(cli: Cli) -> None:
    import rlgrad

    code, out, err = cli("--version")
    assert code == 0 and out == f"rlgrad {rlgrad.__version__}\n"


# ---- forgiving overrides -----------------------------------------------------------------------


def test_integral_floats_are_accepted_for_integer_keys(tmp_path: Path) -> None:
    cfg = load_config(
        "sac_pendulum",
        [
            "total_steps=1e6",
            "agent.buffer_size=2.5e5",
            "agent.hidden_sizes=[64.0,32]",
            "checkpoint.interval=0.0",
        ],
    )
    assert cfg.total_steps == 1_000_000 and type(cfg.total_steps) is int
    assert cfg.agent.buffer_size == 250_000 and type(cfg.agent.buffer_size) is int
    assert cfg.agent.hidden_sizes == [64, 32] and all(
        type(h) is int for h in cfg.agent.hidden_sizes
    )
    assert cfg.checkpoint.interval == 0
    file = tmp_path / "c.yaml"
    file.write_text("agent: {name: sac}\ntotal_steps: 2.0e+4\n")
    assert load_config(file).total_steps == 20_000
    with pytest.raises(ConfigError, match=r"'total_steps' should be a valid integer \(got 1.5\)"):
        load_config("sac_pendulum", ["total_steps=1.5"])
    with pytest.raises(ConfigError, match=r"'seed' should be a valid integer \(got True\)"):
        load_config("sac_pendulum", ["seed=true"])  # a boolean is still not an integer


@pytest.mark.parametrize(
    ("config", "override", "meant"),
    [
        ("sac_pendulum", "lr=3e-4", "agent.learning_rate"),
        ("sac_pendulum", "agent.lr=3e-4", "agent.learning_rate"),
        ("ppo_pendulum", "gamma=0.9", "agent.gamma"),
        ("sac_pendulum", "agent.discount=0.9", "agent.gamma"),
        ("sac_pendulum", "n_envs=4", "env.n_envs"),
        ("ppo_pendulum", "num_envs=4", "env.n_envs"),
        ("sac_pendulum", "total_timesteps=1000", "total_steps"),
        ("sac_pendulum", "device=cpu", "learner.device"),
    ],
)
def test_common_synonyms_say_which_key_is_meant(config: str, override: str, meant: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config, [override])
    key = override.split("=")[0]
    assert str(caught.value).startswith(f"unknown config key '{key}' (did you mean '{meant}'?)")


def test_a_synonym_is_suggested_only_where_its_key_exists() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("ppo_pendulum", ["buffer_size=100"])  # PPO has no replay buffer
    assert "agent.buffer_size" not in str(caught.value)


# ---- run directory names -----------------------------------------------------------------------


def test_default_run_dirs_show_agent_env_seed_and_never_collide(tmp_path: Path) -> None:
    cfg = load_config("ppo_pendulum", ["seed=7", "env.id=rlgrad/PointMass-v0"])
    names = {default_run_dir(cfg, tmp_path).name for _ in range(50)}  # all in one second or two
    assert len(names) == 50
    for name in names:
        assert re.fullmatch(r"ppo-rlgrad_PointMass-v0-s7-\d{8}-\d{6}-[0-9a-f]{4}", name), name
    custom = load_config("sac_pendulum", ["env.id=my_pkg.envs:Corridor-v0"])
    assert default_run_dir(custom).name.startswith("sac-my_pkg.envs_Corridor-v0-s0-")
    assert default_run_dir(custom).parent == Path("runs")
