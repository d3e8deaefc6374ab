"""The progress a run shows: a tqdm bar on a terminal (steps/s, last return, last evaluation),
plain lines without ``\\r`` frames when the output goes to a file or a pipe."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, TINY_OVERRIDES

from rlgrad.logging import Logger, ProgressBar, ProgressLog, make_progress

PLAIN_LINE = re.compile(
    r"step (?P<step>\d+)/(?P<total>\d+) \((?P<percent>\d+)%\)(, \d+ steps/s)?"
    r"(, return (?P<ret>-?\d+\.\d))?(, eval (?P<eval>-?\d+\.\d))?"
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_piped_training_prints_plain_lines(tmp_path: Path) -> None:
    """stdout and stderr into one pipe, as in ``rlgrad train … > train.log 2>&1``: the start
    line comes first (flushed, though a piped stdout is block-buffered), W&B (disabled) adds no
    line, and the progress is a plain line every 5 % of total_steps, the last one after the
    final evaluation, then ``done:``."""
    run_dir = tmp_path / "run"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    overrides = [*TINY_OVERRIDES, "eval.interval=150", "logging.interval=100"]
    command = [sys.executable, "-m", "rlgrad.cli", "train", "sac_pendulum", *overrides]
    proc = subprocess.run(
        [*command, "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout
    assert "\r" not in proc.stdout

    output = proc.stdout.splitlines()
    assert output[0].startswith(f"rlgrad: sac on Pendulum-v1 into {run_dir} (kernels: ")
    assert output[1].startswith("step 15/300 (5%)")  # no W&B line: W&B is disabled
    assert output[-1].startswith("done: 300 steps")
    lines = [PLAIN_LINE.fullmatch(line) for line in output]
    lines = [match for match in lines if match]
    assert [int(m["step"]) for m in lines] == list(range(15, 301, 15))
    assert all(m["total"] == "300" and int(m["percent"]) == int(m["step"]) // 3 for m in lines)
    evals = [json.loads(row) for row in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [row["eval/return_mean"] for row in evals if "eval/return_mean" in row]
    assert [m["eval"] for m in lines[8:11]] == [None] + [f"{evals[0]:.1f}"] * 2  # from 150 on
    assert lines[-1]["eval"] == f"{evals[-1]:.1f}"  # the final evaluation
    assert lines[-1]["ret"] is not None  # an episode ended at step 200


def test_plain_lines_every_five_percent_and_at_the_end() -> None:
    stream = io.StringIO()
    progress = make_progress(20_000, initial=4_000, stream=stream)
    assert isinstance(progress, ProgressLog)
    for step in range(4_500, 20_001, 500):
        progress.advance(step, -812.3 if step >= 5_000 else None, -640.1 if step > 9_000 else None)
    progress.close(-812.3, -600.0)
    lines = stream.getvalue().splitlines()
    assert [PLAIN_LINE.fullmatch(line)["step"] for line in lines] == [
        str(step) for step in range(5_000, 20_001, 1_000)
    ]
    assert re.fullmatch(r"step 5000/20000 \(25%\), \d+ steps/s, return -812\.3", lines[0])
    assert re.fullmatch(
        r"step 10000/20000 \(50%\), \d+ steps/s, return -812\.3, eval -640\.1", lines[5]
    )
    assert lines[-1].endswith(", return -812.3, eval -600.0")


def test_closing_without_new_steps_or_eval_prints_nothing() -> None:
    stream = io.StringIO()
    progress = ProgressLog(1_000, initial=1_000, stream=stream)
    progress.close(None, None)
    assert stream.getvalue() == ""


def test_a_terminal_gets_a_bar_with_the_last_return_and_eval() -> None:
    stream = Terminal()
    progress = make_progress(1_000, stream=stream)
    assert isinstance(progress, ProgressBar)
    progress.advance(500, -812.3, None)
    progress.advance(1_000, -700.0, -640.1)
    progress.close(-700.0, -600.0)
    text = stream.getvalue()
    assert "\r" in text and "1000/1000" in text
    assert text.rstrip().endswith("ret=-700.0, eval=-600.0]")


def test_a_jupyter_output_stream_gets_the_bar() -> None:
    kernel_stream = type("OutStream", (io.StringIO,), {"__module__": "ipykernel.iostream"})
    progress = make_progress(10, stream=kernel_stream())
    assert isinstance(progress, ProgressBar)
    progress.close()


def test_the_logger_feeds_the_last_eval_to_the_progress_and_checkpoint() -> None:
    seen = []

    class Recorder:
        def advance(self, step, last_return, last_eval):
            seen.append((step, last_return, last_eval))

        def close(self, last_return=None, last_eval=None):
            seen.append(("close", last_return, last_eval))

    logger = Logger([], Recorder())
    logger.log({"charts/episodic_return": -812.3}, 100)
    logger.advance(100)
    logger.log({"eval/return_mean": -640.1, "eval/return_std": 3.0}, 200)
    logger.advance(200)
    assert logger.state_dict() == {"last_return": -812.3, "last_eval": -640.1}
    logger.close()
    assert seen == [(100, -812.3, None), (200, -812.3, -640.1), ("close", -812.3, -640.1)]
