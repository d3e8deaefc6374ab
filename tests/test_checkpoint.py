"""rlgrad.checkpoint: exact round trips, clear refusals, atomic replacement."""

from __future__ import annotations

import collections
import io
import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from rlgrad import checkpoint
from rlgrad.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, save_checkpoint


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Recursive equality: same types, same keys, tensors equal in dtype, shape and value."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def checkpoint_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1, f"multi-line message: {message!r}"
    assert str(path) in message
    return message


def nested_state() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "agent": {
            "actor": {"w": torch.randn(4, 3, generator=g), "b": torch.zeros(3)},
            "counts": torch.arange(5),
            "mask": torch.tensor([True, False, True]),
            "half": torch.randn(2, 2, generator=g).to(torch.bfloat16),
            "double": torch.randn(3, generator=g, dtype=torch.float64),
            "scalar": torch.tensor(2.5),
            "empty": torch.empty(0, 7),
        },
        "rng": {"torch": torch.get_rng_state(), "python": [1, 2, 3], "seed": (4, 5)},
        "global_step": 1234,
        "lr": 3e-4,
        "name": "sac",
        "nothing": None,
        "optim": {0: {"step": torch.tensor(7.0)}, 1: {}},
    }


def test_round_trip_of_nested_tensors(tmp_path: Path) -> None:
    state = nested_state()
    path = save_checkpoint(tmp_path / "sub" / "ckpt.pt", state)
    assert path == tmp_path / "sub" / "ckpt.pt" and path.is_file()
    loaded = load_checkpoint(path)
    assert loaded.pop("format") == FORMAT_VERSION
    assert_same(state, loaded)
    # A view's storage is not shared with the saved original.
    loaded["agent"]["counts"][0] = 99
    assert state["agent"]["counts"][0] == 0
    # Nothing but the checkpoint is left in the directory.
    assert sorted(os.listdir(path.parent)) == ["ckpt.pt"]


def test_round_trip_of_a_trained_agent_and_its_optimizers(tmp_path: Path) -> None:
    from rlgrad.agents.sac import Agent, Config
    from rlgrad.config import LearnerConfig
    from rlgrad.envs import EnvSpec
    from rlgrad.learner import Learner

    torch.manual_seed(0)
    learner = Learner(LearnerConfig(device="cpu"))
    cfg = Config(hidden_sizes=[8], buffer_size=64, batch_size=8, learning_starts=0)
    agent = Agent(cfg, EnvSpec(obs_dim=2, act_dim=1), learner, n_envs=4)
    for step in range(1, 6):
        obs = torch.randn(4, 2)
        agent.observe(
            obs,
            agent.act(obs, step),
            torch.randn(4),
            torch.randn(4, 2),
            torch.zeros(4, dtype=torch.bool),
            torch.zeros(4, dtype=torch.bool),
        )
        agent.update(step * 4)
    assert agent.updates > 0
    state = {"agent": agent.state_dict(), "learner": learner.state_dict(), "global_step": 20}
    loaded = load_checkpoint(save_checkpoint(tmp_path / "latest.pt", state))
    loaded.pop("format")
    assert_same(state, loaded)

    # A fresh agent restored from it acts and learns exactly like the original.
    learner2 = Learner(LearnerConfig(device="cpu"))
    agent2 = Agent(cfg, EnvSpec(obs_dim=2, act_dim=1), learner2, n_envs=4)
    agent2.load_state_dict(loaded["agent"])
    learner2.load_state_dict(loaded["learner"])
    obs = torch.randn(4, 2)
    assert torch.equal(agent.act_deterministic(obs), agent2.act_deterministic(obs))
    torch.manual_seed(1)
    agent.update(24)
    torch.manual_seed(1)
    agent2.update(24)
    for p, q in zip(agent.actor.parameters(), agent2.actor.parameters(), strict=True):
        assert torch.equal(p, q)


def test_missing_checkpoint(tmp_path: Path) -> None:
    message = checkpoint_error(tmp_path / "none.pt")
    assert "no checkpoint" in message


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ckpt.pt", nested_state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = checkpoint_error(path)
    assert "corrupt or truncated" in message


@pytest.mark.parametrize("keep", [10, 100, -1])
def test_file_truncated_anywhere_is_refused(tmp_path: Path, keep: int) -> None:
    path = save_checkpoint(tmp_path / "ckpt.pt", {"w": torch.ones(100)})
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    checkpoint_error(path)


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(random.Random(0).randbytes(2000))
    checkpoint_error(path)


@pytest.mark.parametrize("content", [b"", b"hello world\n"], ids=["empty", "text"])
def test_empty_or_text_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    checkpoint_error(path)


class Payload(collections.OrderedDict):
    """An OrderedDict subclass: not among the types weights_only loading allows."""


class Exploit:
    """Unpickling this with a full unpickler would create a marker file."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("kind", ["ordered_dict_subclass", "custom_class", "nested_custom"])
def test_arbitrary_pickled_objects_are_refused(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "code-ran"
    exploit = Exploit()
    exploit.marker = marker
    obj: Any = {
        "ordered_dict_subclass": Payload(w=torch.ones(2)),
        "custom_class": exploit,
        "nested_custom": {"format": FORMAT_VERSION, "agent": {"actor": exploit}},
    }[kind]
    path = tmp_path / "evil.pt"
    torch.save(obj, path)
    message = checkpoint_error(path)
    assert "refusing" in message
    assert not marker.exists(), "unpickling ran arbitrary code"


@pytest.mark.parametrize("obj", [{"w": torch.ones(1)}, [1, 2], {"format": 99}])
def test_file_without_rlgrad_format_is_refused(tmp_path: Path, obj: Any) -> None:
    path = tmp_path / "foreign.pt"
    torch.save(obj, path)
    message = checkpoint_error(path)
    assert "not an rlgrad checkpoint" in message


def test_failed_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = save_checkpoint(tmp_path / "latest.pt", {"step": 1, "w": torch.full((3,), 1.0)})
    old_bytes = path.read_bytes()
    real_save = torch.save
    seen_during_save: list[dict] = []

    def failing_save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[:50])  # a partial write, then the disk "fills up"
        # While the new checkpoint is being written the old one is intact.
        seen_during_save.append(load_checkpoint(path))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"step": 2, "w": torch.full((3,), 2.0)})
    monkeypatch.undo()

    assert seen_during_save and seen_during_save[0]["step"] == 1
    assert path.read_bytes() == old_bytes
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.full((3,), 1.0))
    assert sorted(os.listdir(tmp_path)) == ["latest.pt"], "a temporary file was left behind"


def test_interrupted_save_leaves_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    path = save_checkpoint(tmp_path / "latest.pt", {"step": 1})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["latest.pt"]


def test_save_replaces_atomically_and_syncs(tmp_path: Path, monkeypatch) -> None:
    path = save_checkpoint(tmp_path / "latest.pt", {"step": 1})
    calls: list[str] = []
    real_replace, real_fsync = os.replace, os.fsync

    def spy_replace(src, dst):
        calls.append("replace")
        assert Path(dst) == path and Path(src).parent == path.parent
        return real_replace(src, dst)

    def spy_fsync(fd):
        calls.append("fsync")
        return real_fsync(fd)

    monkeypatch.setattr(checkpoint.os, "replace", spy_replace)
    monkeypatch.setattr(checkpoint.os, "fsync", spy_fsync)
    save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    # The data is synced before the rename and the directory after it.
    assert calls == ["fsync", "replace", "fsync"]
    assert load_checkpoint(path)["step"] == 2
    assert sorted(os.listdir(tmp_path)) == ["latest.pt"]
