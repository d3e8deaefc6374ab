"""The README's code works: every ```bash and ```python block runs, in order, through Sybil.

Sybil parses README.md into examples: ``bash`` blocks run in ``bash -euo pipefail`` and must
exit 0; ``python`` blocks run in one shared namespace (a later block sees an earlier one's
names), as a reader pasting them into one session would. Everything runs in one temporary
folder (so ``runs/`` lands there and a later block can use an earlier block's run), with W&B
disabled. A block that cannot run in a test carries ``<!-- skip: next "reason" -->`` (Sybil's
skip directive) and is reported as skipped with that reason. Fences of other languages
(``yaml``, plain ``` for output) are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

README = REPO / "README.md"
SHELL_TIMEOUT_S = 180  # each block is meant to take seconds; this only stops a hung one
_WORKDIR: dict[str, Path] = {}


def run_shell_block(example: Example) -> str | None:
    """Run a bash block in the shared folder; a non-zero exit fails it with the output's tail."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "WANDB_MODE": "disabled",
        "WANDB_SILENT": "true",
        # One thread per torch process, as the rest of the suite (the test machines share cores).
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    started = time.perf_counter()
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", str(example.parsed)],
        cwd=_WORKDIR["path"],
        env=env,
        capture_output=True,
        text=True,
        timeout=SHELL_TIMEOUT_S,
    )
    took = time.perf_counter() - started
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        where = f"README.md line {example.line}"
        return f"{where}: bash exited {proc.returncode} after {took:.1f}s:\n{tail}"
    return None


SYBIL = Sybil(
    parsers=[
        SkipParser(),
        PythonCodeBlockParser(),
        CodeBlockParser(language="bash", evaluator=run_shell_block),
    ]
)
DOCUMENT = SYBIL.parse(README)
EXAMPLES: list[Example] = list(DOCUMENT)


def _is_skip(example: Example) -> bool:
    return example.region.evaluator is not None and type(example.region.evaluator).__name__ == (
        "Skipper"
    )


def _language(example: Example) -> str:
    return "bash" if example.region.evaluator is run_shell_block else "python"


CODE = [i for i, example in enumerate(EXAMPLES) if not _is_skip(example)]
SKIPPED = {i for i in CODE if i > 0 and _is_skip(EXAMPLES[i - 1])}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _WORKDIR["path"] = tmp_path_factory.mktemp("readme")
    return _WORKDIR["path"]


@pytest.mark.parametrize(
    "index", CODE, ids=[f"line{EXAMPLES[i].line}-{_language(EXAMPLES[i])}" for i in CODE]
)
def test_readme_block(index: int, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One README block (after the skip directive right before it, if any) runs cleanly."""
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    previous_code = max((i for i in CODE if i < index), default=-1)
    for directive in EXAMPLES[previous_code + 1 : index]:
        directive.evaluate()  # installs the skip: this block then raises SkipTest(reason)
    EXAMPLES[index].evaluate()


def test_every_bash_and_python_block_is_collected() -> None:
    """No block a reader would copy escapes the test: every fence is bash, python, yaml or an
    output block, and Sybil found each bash and python one."""
    text = README.read_text()
    fences = re.findall(r"^```(\S*)", text, flags=re.MULTILINE)
    openings = fences[0::2]  # fences alternate: opening (with its language), closing
    assert set(openings) <= {"bash", "python", "yaml", ""}, openings
    code = [EXAMPLES[i] for i in CODE]
    assert [_language(e) for e in code] == [f for f in openings if f in ("bash", "python")]
    assert len(code) >= 10


def test_skipped_blocks_are_few_and_say_why() -> None:
    skips = [e for e in EXAMPLES if _is_skip(e)]
    assert 1 <= len(skips) <= 5
    for skip in skips:
        action, reason = skip.parsed
        assert action == "next"
        assert reason and len(reason.strip("\"' ")) > 10, f"line {skip.line}: give a reason"
    assert len(SKIPPED) == len(skips)  # each directive skips the block right after it
    # The test suite itself is never run from inside it.
    for i in sorted(set(CODE) - SKIPPED):
        assert not re.search(r"^\s*(python -m )?pytest\b", str(EXAMPLES[i].parsed), re.M), (
            f"README.md line {EXAMPLES[i].line} runs pytest: mark it skipped"
        )
