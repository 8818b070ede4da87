"""Every process that builds a Learner keeps freed memory (allocator.py): checked by reading the
effect of the settings back from glibc, not by counting page faults (a count depends on the
machine's load; benchmarks/page_faults.py measures it)."""

import json
import subprocess
import sys

import pytest

# Allocates 24 MiB with malloc and reports whether glibc served it with mmap (returned to the
# kernel on free: the next step faults it back in) or from the heap (kept: what the settings ask).
PROBE = """
import ctypes, json, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype = MallInfo2, ctypes.c_void_p
libc.malloc.argtypes, libc.free.argtypes = [ctypes.c_size_t], [ctypes.c_void_p]
applied = None
if sys.argv[1] == "learner":
    from rlservice.agent.learner import Learner
    from rlservice.config.run import build_run_config
    from rlservice.agent import allocator
    Learner(build_run_config("bench/halfcheetah-v0", "td3bc").agent, 17, 6, reward_min=-1.0)
    applied = allocator.applied()
before = libc.mallinfo2().hblkhd
block = libc.malloc(24 * 2**20)
mmapped = libc.mallinfo2().hblkhd - before >= 24 * 2**20
libc.free(block)
print(json.dumps({"applied": applied, "mmapped": mmapped}))
"""


def probe(kind):
    out = subprocess.run([sys.executable, "-c", PROBE, kind], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_a_process_that_builds_a_learner_keeps_freed_memory():
    assert probe("plain") == {"applied": None, "mmapped": True}  # glibc's defaults: a 24 MiB block is mmapped
    assert probe("learner") == {"applied": True, "mmapped": False}  # after a Learner: from the heap, kept
