"""The allocator settings, which every Learner applies, stop its step from re-faulting its activations' pages."""

import subprocess
import sys

import pytest

# A 10-critic PARS step (5 MiB activations): with glibc's defaults it takes thousands of minor
# page faults per step once warm (about 4,000 on the development machine).
STEPS = """
import resource, sys, torch
from rlservice.agent.learner import Learner
from rlservice.agent.allocator import retain_freed_memory
from rlservice.config.run import build_run_config
from rlservice.data.buffer import ReplayBuffer
torch.manual_seed(0)
n = 20_000
buffer = ReplayBuffer(torch.randn(n, 17), torch.rand(n, 6) * 2 - 1, torch.randn(n), torch.randn(n, 17), torch.zeros(n))
learner = Learner(build_run_config("bench/halfcheetah-v0", "pars").agent, 17, 6, reward_min=-1.0)
step = lambda: learner.update(buffer.sample(learner.generator, 1, 256))
for _ in range(10):
    step()
per_step = []  # in windows of 10 steps: the heap still grows now and then to a new high-water mark
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    per_step.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
print(sorted(per_step)[2])  # the median window
assert retain_freed_memory()  # the settings take on this C library
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_warm_learner_steps_take_no_page_faults():
    out = subprocess.run([sys.executable, "-c", STEPS], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) < 50
