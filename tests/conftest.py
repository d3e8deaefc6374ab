"""Shared helpers for rlgrad's tests.

* ``cli(*args)`` runs ``rlgrad.cli.main`` in-process and returns ``(exit_code, stdout, stderr)``.
* ``train_tiny(*overrides, run_dir=…)`` runs a 300-step SAC training on Pendulum into a tmp
  run dir (``run_tiny_training`` does the same without capsys, for module-scoped fixtures).
* ``existing_run`` is a run directory holding files; ``snapshot(dir)`` maps its files to their
  bytes, so a test can check that a refused command left it alone.
* torch runs single-threaded for the whole session (the test machines share their cores).

W&B is *not* disabled globally (a test reads W&B offline files); the tiny training passes
``logging.wandb=disabled`` itself.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SAC_PENDULUM = CONFIGS / "sac_pendulum.yaml"

# The overrides that make a SAC run on Pendulum take a few seconds.
TINY_OVERRIDES: tuple[str, ...] = (
    "total_steps=300",
    "logging.wandb=disabled",
    "agent.learning_starts=50",
    "agent.batch_size=32",
    "agent.hidden_sizes=[32,32]",
    "eval.episodes=2",
    "eval.interval=0",
)

CliResult = tuple[int, str, str]


@pytest.fixture(scope="session", autouse=True)
def _single_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _call_main(args: tuple[str, ...]) -> int:
    from rlgrad.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code if isinstance(exc.code, int) else 1
    return 0 if code is None else int(code)


def run_cli(*args: str | Path) -> CliResult:
    """``rlgrad ARGS`` in-process with stdout/stderr redirected; usable in any fixture scope."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _call_main(tuple(str(a) for a in args))
    return code, out.getvalue(), err.getvalue()


def tiny_train_args(run_dir: str | Path, *overrides: str) -> list[str]:
    """``rlgrad train`` arguments for a tiny SAC run; ``overrides`` come last and so win."""
    return [
        "train",
        str(SAC_PENDULUM),
        *TINY_OVERRIDES,
        *overrides,
        "--quiet",
        "--run-dir",
        str(run_dir),
    ]


def run_tiny_training(run_dir: str | Path, *overrides: str, overwrite: bool = False) -> CliResult:
    """A tiny SAC training into ``run_dir`` (no capsys needed, so module fixtures can use it)."""
    args = tiny_train_args(run_dir, *overrides)
    return run_cli(*args, *(["--overwrite"] if overwrite else []))


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """``cli("train", "cfg.yaml", "seed=1")`` → ``(exit_code, stdout, stderr)`` via capsys."""

    def _cli(*args: str | Path) -> CliResult:
        capsys.readouterr()  # drop whatever earlier code printed
        code = _call_main(tuple(str(a) for a in args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return _cli


@pytest.fixture
def train_tiny(cli: Callable[..., CliResult], tmp_path: Path) -> Callable[..., CliResult]:
    """``train_tiny("seed=1", run_dir=..., overwrite=True)`` → ``(exit_code, stdout, stderr)``.

    The run goes to ``run_dir``, by default ``tmp_path / "run"``.
    """

    def _train(
        *overrides: str, run_dir: str | Path | None = None, overwrite: bool = False
    ) -> CliResult:
        args = tiny_train_args(run_dir or tmp_path / "run", *overrides)
        return cli(*args, *(["--overwrite"] if overwrite else []))

    return _train


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path → bytes)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def existing_run(tmp_path: Path) -> Path:
    """A directory that already holds a run (its files must survive a failed command)."""
    run_dir = tmp_path / "existing"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("agent:\n  name: sac\ntotal_steps: 7\n")
    (run_dir / "metrics.jsonl").write_text('{"global_step": 7, "charts/sps": 1.0}\n')
    (run_dir / "checkpoints" / "latest.pt").write_bytes(b"precious")
    return run_dir


def assert_one_line_error(stderr: str, *fragments: str) -> str:
    """stderr is exactly one line ``rlgrad: error: …`` that contains every fragment."""
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}: {stderr!r}"
    line = lines[0]
    assert line.startswith("rlgrad: error:"), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def filled_sac_agent(learner_cfg: object, seed: int, n: int = 500) -> object:
    """A small SAC agent (32-32, batch 64) on a 3-d obs, 1-d action task whose replay buffer
    holds ``n`` random transitions (5 % terminal); torch seeded with ``seed``, data ``seed + 1``."""
    from rlgrad.agents import sac
    from rlgrad.envs import EnvSpec
    from rlgrad.learner import Learner

    torch.manual_seed(seed)
    cfg = sac.Config(hidden_sizes=[32, 32], batch_size=64)
    agent = sac.Agent(cfg, EnvSpec(3, 1), Learner(learner_cfg), n_envs=1)
    gen = torch.Generator().manual_seed(seed + 1)
    agent.buffer.add(
        torch.randn(n, 3, generator=gen),
        torch.rand(n, 1, generator=gen) * 2 - 1,
        torch.randn(n, generator=gen),
        torch.randn(n, 3, generator=gen),
        torch.rand(n, generator=gen) < 0.05,
        torch.zeros(n, dtype=torch.bool),
    )
    return agent
