"""Minor page faults per warm learner step (what `rlservice/agent/allocator.py` removes).

    python benchmarks/page_faults.py [--preset pars] [--glibc-defaults]

A count, not a test: it depends on what else the machine runs (the tests check instead that the
allocator settings are applied, tests/agent/test_allocator.py). The 10-critic PARS step took
about 4,000 faults per step with glibc's defaults on the 2-core development machine, ~0 with the settings.
"""

from __future__ import annotations

import argparse
import json
import resource
from unittest import mock

import torch

from rlservice.config.run import build_run_config
from rlservice.data.buffer import ReplayBuffer


def faults_per_step(preset: str, windows: int = 5, window: int = 10) -> float:
    """The median over windows of `window` warm steps: the heap still grows now and then to a new high-water mark."""
    from rlservice.agent.learner import Learner

    torch.manual_seed(0)
    n = 20_000
    buffer = ReplayBuffer(torch.randn(n, 17), torch.rand(n, 6) * 2 - 1, torch.randn(n), torch.randn(n, 17), torch.zeros(n))
    learner = Learner(build_run_config("bench/halfcheetah-v0", preset).agent, 17, 6, reward_min=-1.0)
    step = lambda: learner.update(buffer.sample(learner.generator, 1, 256))  # noqa: E731
    for _ in range(10):
        step()
    per_step = []
    for _ in range(windows):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(window):
            step()
        per_step.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / window)
    return sorted(per_step)[windows // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="pars")
    p.add_argument("--glibc-defaults", action="store_true", help="do not apply the allocator settings")
    args = p.parse_args()
    if args.glibc_defaults:
        with mock.patch("rlservice.agent.learner.retain_freed_memory"):
            faults = faults_per_step(args.preset)
    else:
        faults = faults_per_step(args.preset)
    print(json.dumps({"preset": args.preset, "glibc_defaults": args.glibc_defaults, "minor_faults_per_step": faults}))


if __name__ == "__main__":
    main()
