"""The W&B sink: an offline run of `rlgrad train` holds the metrics, config and grouping."""

from __future__ import annotations

import json
from pathlib import Path

from wandb_records import find_run_file, history_rows, run_info, wait_for_exit_record

from rlgrad.logging import resolve_wandb_mode

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sac_pendulum.yaml"
EXPECTED = {
    "charts/episodic_return", "charts/episodic_length", "charts/sps", "losses/critic",
    "losses/actor", "losses/alpha", "charts/alpha", "eval/return_mean", "eval/return_std",
}  # fmt: skip


def test_offline_wandb_run_holds_the_logged_metrics(cli, tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_RUN_GROUP", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run_dir = tmp_path / "run"
    code, _, err = cli(
        "train", str(CONFIG), "total_steps=400", "agent.learning_starts=100",
        "agent.batch_size=32", "agent.hidden_sizes=[32,32]", "eval.episodes=2",
        "eval.interval=0", "logging.interval=100", "logging.wandb=auto",
        "logging.group=test-group", "logging.project=rlgrad-test", "--run-dir", str(run_dir),
        "--quiet",
    )  # fmt: skip
    assert code == 0, err

    path = find_run_file(run_dir / "wandb")
    wait_for_exit_record(path)
    rows = history_rows(path)
    logged = {key for row in rows for key in row}
    assert EXPECTED <= logged
    assert all("global_step" in row for row in rows)

    jsonl = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final_eval = [r for r in jsonl if "eval/return_mean" in r][-1]
    wandb_eval = [r for r in rows if "eval/return_mean" in r][-1]
    assert wandb_eval["eval/return_mean"] == final_eval["eval/return_mean"]
    assert wandb_eval["global_step"] == final_eval["global_step"] == 400

    info = run_info(path)
    assert info["project"] == "rlgrad-test"
    assert info["group"] == "test-group"
    assert info["config"]["agent"]["name"] == "sac"
    assert info["config"]["total_steps"] == 400


def test_auto_mode_is_offline_without_a_key_and_online_with_one(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert resolve_wandb_mode("auto") == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password abc\n")
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"
    assert resolve_wandb_mode("offline") == "offline"
