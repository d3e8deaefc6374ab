"""The learner's speed options on CPU: ``learner.compile`` (and its fallback) computes what the
eager code computes, and ``learner.nonfinite_check_interval`` > 1 skips exactly the steps the
synchronous guard skips (values, not timings)."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import filled_sac_agent
from torch import nn

from rlgrad.agents import ppo, sac
from rlgrad.config import ConfigError, LearnerConfig, validate
from rlgrad.envs import EnvSpec
from rlgrad.learner import Learner, NonFiniteError

# aot_eager traces with dynamo and AOTAutograd like inductor does, without building C++ kernels
# (tens of seconds per graph on CPU); inductor itself is what a GPU run uses.
BACKEND = "aot_eager"


def _sac(compile_: bool, **learner) -> sac.Agent:
    return filled_sac_agent(LearnerConfig(compile=compile_, **learner), seed=0, n=400)


def _sac_updates(agent: sac.Agent, n: int = 5) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(2)
    return [agent.update_once(agent.buffer.sample(64)) for _ in range(n)]


def _assert_same_sac(a: sac.Agent, b: sac.Agent, metrics_a, metrics_b) -> None:
    for got, want in zip(metrics_a, metrics_b, strict=True):
        assert got.keys() == want.keys()
        for key in got:
            torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-6)
    for module in ("actor", "critic", "critic_target"):
        pairs = zip(getattr(a, module).parameters(), getattr(b, module).parameters(), strict=True)
        for p, q in pairs:
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


# reduce-overhead is CUDA-graph capture on a GPU; on CPU it must fall back to plain compiling.
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_sac_update_computes_what_the_eager_one_does(monkeypatch, mode):
    monkeypatch.setattr(Learner, "compile_backend", BACKEND)
    eager, compiled = _sac(False), _sac(True, compile_mode=mode)
    assert not eager.learner.cfg.compile and compiled.compiled["critic_loss"] is not (
        compiled.critic_loss
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback happened
        compiled.learner.mark_step()  # a no-op on CPU
        metrics_compiled = _sac_updates(compiled)
    _assert_same_sac(eager, compiled, _sac_updates(eager), metrics_compiled)


def test_compile_falls_back_to_eager_with_one_warning_when_compiling_fails(monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("no C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    eager, fallback = _sac(False), _sac(True)
    with pytest.warns(RuntimeWarning, match="learner.compile: .* running it eagerly") as caught:
        metrics = _sac_updates(fallback)
    assert len([w for w in caught if "learner.compile" in str(w.message)]) == 2  # one per fn
    _assert_same_sac(eager, fallback, _sac_updates(eager), metrics)


def test_compiled_ppo_update_computes_what_the_eager_one_does(monkeypatch):
    monkeypatch.setattr(Learner, "compile_backend", BACKEND)

    def run(compile_: bool) -> tuple[ppo.Agent, dict[str, torch.Tensor]]:
        torch.manual_seed(3)
        cfg = ppo.Config(n_steps=64, batch_size=16, n_epochs=2)
        agent = ppo.Agent(cfg, EnvSpec(3, 1), Learner(LearnerConfig(compile=compile_)), 2)
        gen = torch.Generator().manual_seed(4)
        for t in range(64):
            agent.observe(
                torch.randn(2, 3, generator=gen),
                torch.randn(2, 1, generator=gen),
                torch.randn(2, generator=gen),
                torch.randn(2, 3, generator=gen),
                torch.tensor([t % 50 == 49, False]),
                torch.tensor([False, t % 30 == 29]),
            )
        return agent, agent.update(128)

    (eager, m_eager), (compiled, m_compiled) = run(False), run(True)
    for key in m_eager:
        torch.testing.assert_close(m_compiled[key], m_eager[key], rtol=1e-6, atol=1e-6)
    for p, q in zip(eager.policy.parameters(), compiled.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def _net_learner(**cfg) -> tuple[Learner, nn.Linear]:
    torch.manual_seed(5)
    net = nn.Linear(3, 1)
    learner = Learner(LearnerConfig(device="cpu", **cfg))
    learner.add_optimizer("net", net.parameters(), lr=0.1)
    return learner, net


def test_deferred_guard_takes_the_same_steps_as_the_synchronous_one():
    """A stream of finite and NaN losses: bit-equal parameters, Adam state and step counts."""
    (sync, net_sync), (deferred, net_deferred) = (
        _net_learner(),
        _net_learner(nonfinite_check_interval=4),
    )
    x = torch.randn(8, 8, 3)
    poison = [False, True, False, False, True, True, False, False]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for xi, bad in zip(x, poison, strict=True):
            for learner, net in ((sync, net_sync), (deferred, net_deferred)):
                loss = net(xi).pow(2).mean()
                learner.step("net", loss * float("nan") if bad else loss)
        deferred.check_nonfinite()
    for p, q in zip(net_sync.parameters(), net_deferred.parameters(), strict=True):
        assert torch.equal(p, q)
    opt_sync, opt_deferred = sync.optimizers["net"], deferred.optimizers["net"]
    for p, q in zip(net_sync.parameters(), net_deferred.parameters(), strict=True):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_sync.state[p][key], opt_deferred.state[q][key]), key
    assert deferred.nonfinite_skips == sync.nonfinite_skips == 3
    assert deferred.consecutive["net"] == sync.consecutive["net"] == 0


def test_deferred_guard_warns_and_stops_at_its_checks_only():
    learner, net = _net_learner(nonfinite_check_interval=3, max_nonfinite=4)
    before = [p.detach().clone() for p in net.parameters()]
    x = torch.randn(4, 3)
    nan_loss = lambda: net(x).mean() * float("nan")  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        learner.step("net", nan_loss())
        learner.step("net", nan_loss())  # two skips, no check yet: no warning
    assert learner.nonfinite_skips == 0
    with pytest.warns(RuntimeWarning, match=r"3 update\(s\) skipped .*3 in a row"):
        learner.step("net", nan_loss())  # the third step is a check
    assert learner.nonfinite_skips == 3 and learner.consecutive["net"] == 3
    for b, p in zip(before, net.parameters(), strict=True):
        assert torch.equal(b, p)
    assert float(learner.optimizers["net"].state[net.weight]["step"]) == 0.0
    with pytest.warns(RuntimeWarning), pytest.raises(NonFiniteError, match="6 consecutive"):
        for _ in range(3):  # the streak reaches 4 at the next step, the check is at the 6th
            learner.step("net", nan_loss())


def test_speed_options_are_validated():
    base = {"agent": {"name": "sac"}, "total_steps": 10}
    cfg = validate({**base, "learner": {"compile": True, "compile_mode": "reduce-overhead"}})
    assert cfg.learner.compile and cfg.learner.compile_mode == "reduce-overhead"
    with pytest.raises(ConfigError, match="learner.compile_mode"):
        validate({**base, "learner": {"compile_mode": "fast"}})
    with pytest.raises(ConfigError, match="learner.nonfinite_check_interval"):
        validate({**base, "learner": {"nonfinite_check_interval": 0}})
