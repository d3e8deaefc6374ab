"""The learner: non-finite losses and gradients are never applied; clipping; device choice."""

from __future__ import annotations

import copy

import pytest
import torch

from rlgrad.config import LearnerConfig
from rlgrad.learner import Learner, NonFiniteError, resolve_device


def _learner(**cfg) -> tuple[Learner, torch.nn.Linear]:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    learner = Learner(LearnerConfig(device="cpu", **cfg))
    learner.add_optimizer("net", net.parameters(), lr=0.1)
    return learner, net


def test_nan_loss_is_skipped_and_counted_then_the_run_stops():
    learner, net = _learner(max_nonfinite=3)
    before = [p.detach().clone() for p in net.parameters()]
    x = torch.randn(4, 3)
    for i in range(2):
        with pytest.warns(RuntimeWarning, match="loss 'net'"):
            learner.step("net", net(x).mean() * torch.tensor(float("nan")))
        assert learner.nonfinite_skips == i + 1
    for b, p in zip(before, net.parameters(), strict=True):
        assert torch.equal(b, p)
    assert not learner.optimizers["net"].state  # Adam's moments were never touched
    learner.step("net", net(x).mean())  # a good update resets the streak
    assert learner.consecutive == {"net": 0}
    with pytest.warns(RuntimeWarning), pytest.raises(NonFiniteError, match="3 consecutive"):
        for _ in range(3):
            learner.step("net", net(x).mean() * torch.tensor(float("inf")))


def test_gradient_norm_is_reported_before_clipping_and_grads_are_clipped():
    learner, net = _learner()
    x = torch.randn(16, 3) * 10
    loss = net(x).pow(2).mean()
    expected = torch.nn.utils.get_total_norm(
        torch.autograd.grad(loss, list(net.parameters()), retain_graph=True)
    )
    norm = learner.step("net", loss, max_grad_norm=0.01)
    assert norm.item() == pytest.approx(expected.item(), rel=1e-6)
    clipped = torch.nn.utils.get_total_norm([p.grad for p in net.parameters()])
    assert clipped.item() == pytest.approx(0.01, rel=1e-4)


def test_device_auto_is_cpu_without_cuda_and_cuda_is_refused():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the CPU fallback cannot be observed here")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda")


def test_a_loss_that_stays_nan_stops_the_run_while_another_loss_is_finite():
    """Skips count per loss: a NaN critic must not be hidden by a finite actor step."""
    learner, net = _learner(max_nonfinite=3)
    learner.add_optimizer("other", [torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    x = torch.randn(4, 3)
    with pytest.warns(RuntimeWarning), pytest.raises(NonFiniteError, match="loss 'net'"):
        for _ in range(3):
            learner.step("net", net(x).mean() * torch.tensor(float("nan")))
            learner.step("other", (learner.params("other")[0] ** 2).sum() + 1.0)


@pytest.mark.parametrize("max_grad_norm", [None, 0.05, 1e6])
def test_fused_step_equals_torch_clip_and_adam_bit_for_bit(max_grad_norm):
    """The learner's lean norm, clip and fused Adam step against torch's own utilities."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    twin = copy.deepcopy(net)
    learner = Learner(LearnerConfig(device="cpu"))
    learner.add_optimizer("net", net.parameters(), lr=0.01)
    reference = torch.optim.Adam(twin.parameters(), lr=0.01, fused=True)
    for _ in range(5):
        x = torch.randn(16, 3) * 10
        norm = learner.step("net", net(x).pow(2).mean(), max_grad_norm=max_grad_norm)
        reference.zero_grad()
        twin(x).pow(2).mean().backward()
        params = list(twin.parameters())
        expected = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        if max_grad_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, max_grad_norm, expected, foreach=True)
        reference.step()
        assert torch.equal(norm, expected)
        for p, q in zip(net.parameters(), twin.parameters(), strict=True):
            assert torch.equal(p, q) and torch.equal(p.grad, q.grad)


def test_gradient_clipping_is_an_agent_setting_not_a_learner_one():
    """``learner.max_grad_norm`` is gone (clipping is ``agent.max_grad_norm``); the error says
    where the setting went."""
    from rlgrad.config import ConfigError, validate

    for agent in ("ppo", "reinforce", "sac"):
        with pytest.raises(ConfigError, match=r"did you mean 'agent\.max_grad_norm'"):
            validate({"agent": {"name": agent}, "total_steps": 10, "learner": {"max_grad_norm": 1}})
    assert "max_grad_norm" not in LearnerConfig.model_fields
    for agent, default in (("ppo", 0.5), ("reinforce", None)):
        cfg = validate({"agent": {"name": agent}, "total_steps": 10})
        assert cfg.agent.max_grad_norm == default


def test_step_records_the_pre_clip_gradient_norm_per_loss():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    learner = Learner(LearnerConfig(device="cpu"))
    learner.add_optimizer("net", net.parameters(), lr=1e-3)
    x = torch.randn(8, 4)
    loss = net(x).pow(2).sum() * 100.0
    grads = torch.autograd.grad(loss, list(net.parameters()), retain_graph=True)
    want = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
    learner.step("net", loss, max_grad_norm=0.1)  # clipped hard: the record is from before
    assert float(learner.grad_norms["net"]) == pytest.approx(float(want), rel=1e-5)
    assert float(want) > 1.0
