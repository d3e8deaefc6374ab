"""Where one SAC update's time goes, against the time its matrix arithmetic needs.

    python experiments/profile_sac_update.py [--updates 60] [--rounds 10] [--no-sb3]

SB3-default SAC (256-256 nets, batch 256) on Pendulum's sizes (obs 3, action 1), one torch
thread, CPU. Measured side by side in one process, in interleaved rounds (medians of CPU time
of this thread, which other jobs on a shared machine disturb less than wall time):

* **floor**: the update's 16 products of a 256×256 layer (forward, backward and the actor's
  pass through the frozen critics; 0.54 GFLOP), run back to back on hot operands;
* **rlgrad**: ``Agent.update_once`` on a replay batch;
* **SB3**: ``SAC.train(gradient_steps=1)`` on the same sizes (unless ``--no-sb3``);
* **cold operands**: one 256×256 product and one element-wise pass over a (2, 256, 256)
  activation after 64 MB of other memory traffic, against the same on hot operands.

* **rlgrad, hidden 16**: the same update with 16-wide layers, whose time is the cost per
  operation and of Python, which does not grow with the layers.

The update's time then splits by subtraction into the products at full speed (the floor), the
per-op cost (hidden 16) and the rest: what the larger tensors cost beyond their arithmetic —
memory traffic, and products whose operands come from memory rather than cache. Last, the
PyTorch profiler's self time of ``--updates`` updates by kind of operation: the 16 large
products, the small ones (first and last layers), element-wise passes over the critics'
(2, 256, 256) activations, other operations, and what it does not attribute to an operation
(Python, dispatch, autograd bookkeeping); its clock is the wall clock, so on a busy machine
read its shares, not its milliseconds. See experiments/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import torch

GEMMS = ("aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm")
BIG = ("[2, 256, 256], [2, 256, 256]", "[256, 256], [256, 256]")


def make_agent(seed: int = 0, hidden: int = 256):
    from rlgrad.agents import sac
    from rlgrad.config import LearnerConfig
    from rlgrad.envs import EnvSpec
    from rlgrad.learner import Learner

    torch.manual_seed(seed)
    cfg = sac.Config(hidden_sizes=[hidden, hidden])
    agent = sac.Agent(cfg, EnvSpec(3, 1), Learner(LearnerConfig(device="cpu")), 1)
    gen = torch.Generator().manual_seed(seed)
    n = 10_000
    agent.buffer.add(
        torch.randn(n, 3, generator=gen),
        torch.rand(n, 1, generator=gen) * 2 - 1,
        torch.randn(n, generator=gen),
        torch.randn(n, 3, generator=gen),
        torch.zeros(n, dtype=torch.bool),
        torch.zeros(n, dtype=torch.bool),
    )
    return agent


def floor_fn() -> Callable[[], None]:
    """The update's 16 layer-sized products: critic forward ×3 (online, target, frozen),
    critic backward ×3 (weights and input; input only for the frozen pass), actor forward ×2
    and backward ×2 (weights and input)."""
    h, w, b = torch.randn(2, 256, 256), torch.randn(2, 256, 256), torch.randn(2, 1, 256)
    x, y, c = torch.randn(256, 256), torch.randn(256, 256), torch.randn(256)

    def run() -> None:
        for _ in range(3):
            torch.baddbmm(b, h, w)
            torch.bmm(h, w)
        for _ in range(2):
            torch.addmm(c, x, y)
            torch.mm(x, y)

    return run


def sb3_train_fn() -> Callable[[], None] | None:
    try:
        import gymnasium as gym
        from stable_baselines3 import SAC
    except ImportError:
        return None
    model = SAC("MlpPolicy", gym.make("Pendulum-v1"), seed=0, device="cpu", verbose=0)
    model.learn(400)  # fills the buffer past learning_starts
    torch.set_num_threads(1)
    return lambda: model.train(gradient_steps=1, batch_size=256)


def cold_vs_hot() -> dict[str, float]:
    """Median µs of a product and an element-wise pass with hot operands and after 64 MB of
    other traffic has evicted them."""
    big = torch.empty(16 << 20)
    h, g, w = torch.randn(2, 256, 256).relu_(), torch.randn(2, 256, 256), torch.randn(2, 256, 256)
    ops = {
        "bmm (2, 256, 256)": lambda: torch.bmm(h, w),
        "relu backward (2, 256, 256)": lambda: torch.ops.aten.threshold_backward(g, h, 0.0),
    }
    out = {}
    for name, op in ops.items():
        for cold in (False, True):
            times = []
            for _ in range(60):
                if cold:
                    big.fill_(1.0)
                start = time.thread_time()
                op()
                times.append(time.thread_time() - start)
            out[f"{name}, {'cold' if cold else 'hot'}"] = statistics.median(times) * 1e6
    return out


def timed(fn: Callable[[], object], n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    return times


def profile_update(agent, n: int) -> tuple[dict[str, float], float]:
    """Self time per update (ms) by kind of operation, and the update's wall time (ms; the
    profiler's clock is the wall clock too)."""
    from torch.profiler import ProfilerActivity, profile

    def update() -> None:
        agent.update_once(agent.buffer.sample(256))

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        for _ in range(n):
            update()
        total = (time.perf_counter() - start) / n * 1e3
    kinds: dict[str, float] = defaultdict(float)
    for event in prof.key_averages(group_by_input_shape=True):
        if not event.key.startswith("aten::"):
            continue
        shapes = str(event.input_shapes)
        if event.key in GEMMS:
            kind = "16 layer-sized products" if any(s in shapes for s in BIG) else "small products"
        elif "256, 256]" in shapes and shapes.startswith("[[2,"):
            kind = "element-wise on (2, 256, 256) activations"
        else:
            kind = "other operations"
        kinds[kind] += event.self_cpu_time_total / n / 1e3
    kinds["Python, dispatch, autograd bookkeeping"] = total - sum(kinds.values())
    return dict(kinds), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=60, help="updates under the profiler")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--no-sb3", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    agent, small = make_agent(), make_agent(hidden=16)
    fns: dict[str, Callable[[], object]] = {
        "floor: 16 layer-sized products, hot": floor_fn(),
        "rlgrad update_once": lambda: agent.update_once(agent.buffer.sample(256)),
        "rlgrad update_once, hidden 16": lambda: small.update_once(small.buffer.sample(256)),
    }
    sb3 = None if args.no_sb3 else sb3_train_fn()
    if sb3 is not None:
        fns["SB3 train(gradient_steps=1)"] = sb3
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        timed(fn, 10)  # warm-up
    for _ in range(args.rounds):
        for name, fn in fns.items():
            times[name] += timed(fn, 10)
    print("SAC update, SB3 defaults (256-256, batch 256), Pendulum sizes, 1 thread, CPU time")
    for name, values in times.items():
        print(f"  {name:40s} {statistics.median(values) * 1e3:7.2f} ms")
    flops = 16 * 2 * 256**3
    med = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    floor, update = med["floor: 16 layer-sized products, hot"], med["rlgrad update_once"]
    fixed = med["rlgrad update_once, hidden 16"]
    print(f"  (the products: {flops / 1e9:.2f} GFLOP at {flops / floor / 1e6:.0f} GFLOP/s)")
    print("\nrlgrad's update, split by subtraction (CPU time)")
    print(f"  the products at full speed (floor)        {floor:7.2f} ms")
    print(f"  per-op and Python cost (hidden-16 update)  {fixed:7.2f} ms")
    print(f"  the rest: memory traffic, cold operands    {update - floor - fixed:7.2f} ms")

    print("\nhot and cold operands (median µs)")
    for name, value in cold_vs_hot().items():
        print(f"  {name:40s} {value:8.1f}")

    kinds, total = profile_update(agent, args.updates)
    print(f"\nrlgrad update_once under the profiler: {total:.2f} ms wall (profiling adds some)")
    for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:45s} {ms:6.2f} ms  {100 * ms / total:4.0f}%")


if __name__ == "__main__":
    main()
