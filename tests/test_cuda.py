"""The learner on CUDA: every agent trains there, and its numbers match the CPU's.

Skipped where no CUDA device exists (CI); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlgrad.checkpoint import load_checkpoint
from rlgrad.config import load_config
from rlgrad.diagnostics import per_sample_grads
from rlgrad.runner import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = {
    "sac_pendulum.yaml": ["total_steps=400", "agent.learning_starts=100", "agent.batch_size=64"],
    "ppo_pendulum.yaml": ["total_steps=512", "agent.n_steps=64"],
    "reinforce_invpendulum.yaml": ["total_steps=512"],
}
COMMON = ["logging.wandb=disabled", "eval.episodes=2", "eval.interval=0", "diagnostics.interval=2"]


@pytest.mark.parametrize("config", sorted(TINY))
def test_training_runs_on_cuda_and_resumes(tmp_path: Path, config: str) -> None:
    cfg = load_config(CONFIGS / config, [*TINY[config], *COMMON, "learner.device=cuda"])
    result = train(cfg, tmp_path / "run", quiet=True)
    assert result.global_step == cfg.total_steps
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert checkpoint["global_step"] == cfg.total_steps
    longer = cfg.model_copy(update={"total_steps": cfg.total_steps * 2})
    assert (
        train(longer, tmp_path / "run", quiet=True, resume=True).global_step == 2 * cfg.total_steps
    )


def test_sac_buffers_and_networks_live_on_cuda() -> None:
    from rlgrad.agents.sac import Agent, Config
    from rlgrad.envs import EnvSpec
    from rlgrad.learner import Learner

    learner = Learner(load_config(CONFIGS / "sac_pendulum.yaml", ["learner.device=cuda"]).learner)
    agent = Agent(
        Config(hidden_sizes=[32, 32], batch_size=16, learning_starts=8), EnvSpec(3, 1), learner, 1
    )
    obs = torch.randn(1, 3, device="cuda")
    for step in range(20):
        action = agent.act(obs, step)
        assert action.device.type == "cuda"
        done = torch.zeros(1, dtype=torch.bool, device="cuda")
        agent.observe(obs, action, torch.ones(1, device="cuda"), obs, done, done)
        agent.update(step + 1)
    assert all(p.device.type == "cuda" for p in agent.actor.parameters())
    assert agent.buffer.obs.device.type == "cuda"


def test_per_sample_gradients_on_cuda_match_cpu() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    x, y = torch.randn(64, 4), torch.randn(64, 1)

    def loss(params_net, xi, yi):
        return ((params_net(xi) - yi) ** 2).mean()

    cpu = per_sample_grads(net, loss, x, y)
    gpu = per_sample_grads(net.cuda(), loss, x.cuda(), y.cuda())
    for name in cpu:
        torch.testing.assert_close(gpu[name].cpu(), cpu[name], rtol=1e-4, atol=1e-5)
