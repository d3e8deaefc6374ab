"""rlgrad.torch_private: with torch's private APIs forced off, the public fallbacks give the same
updates (to 1e-6) and the same acting."""

from __future__ import annotations

import torch
from conftest import filled_sac_agent

from rlgrad import torch_private
from rlgrad.config import LearnerConfig
from rlgrad.networks import PlainForward, mlp


def _sac_updates(public: bool, n: int = 5):
    agent = filled_sac_agent(LearnerConfig(device="cpu", max_nonfinite=5), seed=3)
    torch.manual_seed(9)
    if public:
        with torch_private.public_only():
            metrics = [agent.update_once(agent.buffer.sample(64)) for _ in range(n)]
    else:
        metrics = [agent.update_once(agent.buffer.sample(64)) for _ in range(n)]
    return agent, metrics


def test_private_apis_are_available_on_the_tested_torch():
    assert torch_private.private_available()
    with torch_private.public_only():
        assert not torch_private.private_available()
    assert torch_private.private_available()


def test_public_fallback_gives_the_same_sac_updates():
    private, metrics_private = _sac_updates(public=False)
    public, metrics_public = _sac_updates(public=True)
    for got, want in zip(metrics_public, metrics_private, strict=True):
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-6)
    for module in ("actor", "critic", "critic_target"):
        mine, theirs = getattr(public, module), getattr(private, module)
        for p, q in zip(mine.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    for name, opt in private.learner.optimizers.items():
        other = public.learner.optimizers[name]
        params = zip(opt.param_groups[0]["params"], other.param_groups[0]["params"], strict=True)
        for p, q in params:
            torch.testing.assert_close(
                opt.state[p]["exp_avg_sq"], other.state[q]["exp_avg_sq"], rtol=1e-6, atol=1e-9
            )


def test_public_fallback_helpers_equal_the_private_ones():
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(5, 3, generator=gen), torch.randn(7, generator=gen)]
    ys = [torch.randn(5, 3, generator=gen), torch.randn(7, generator=gen)]
    norms = torch_private.foreach_norm(xs)
    with torch_private.public_only():
        assert torch.allclose(torch.stack(torch_private.foreach_norm(xs)), torch.stack(norms))
        a = [x.clone() for x in xs]
        torch_private.foreach_lerp_(a, ys, 0.25)
        torch_private.foreach_mul_(a, torch.tensor(0.5))
    b = [x.clone() for x in xs]
    torch_private.foreach_lerp_(b, ys, 0.25)
    torch_private.foreach_mul_(b, torch.tensor(0.5))
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v)


def test_plain_forward_reads_live_parameters_either_way():
    torch.manual_seed(1)
    net = mlp([3, 8, 2], activation="tanh")
    x = torch.randn(4, 3)
    with torch_private.public_only():
        public = PlainForward(net)
    private = PlainForward(net)
    with torch.no_grad():
        net[0].weight.mul_(2.0)  # seen by both at their next call
    torch.testing.assert_close(public(x), net(x))
    torch.testing.assert_close(private(x), net(x))
