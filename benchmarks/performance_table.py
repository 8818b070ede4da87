"""The README's Performance table: runs benchmarks/learner.py for each row and prints markdown.

    python benchmarks/performance_table.py [--device D] [--quick]

Each row is one `benchmarks/learner.py` run (one process run each, as the commands in the
first column would be); the last column is the comparison that run makes in the same
process: the reference, the baseline without the regulariser, or one seed alone. The peak
is the best fp32 matmul kernel's (`peak by kernel` lists each one's GFLOP/s).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import time

import learner
import torch

ROWS = [
    ["--preset", "td3bc", "--compare-reference", "--repeats", "5"],
    ["--preset", "pars", "--steps", "100"],
    ["--preset", "pars", "--steps", "100", "--compile"],
    ["--preset", "pani", "--baseline", "noise_sigma=0", "--repeats", "5"],
    ["--preset", "pars", "--steps", "60", "--baseline", "pa_alpha=0"],
    ["--preset", "pars", "--steps", "60", "--set", "pa_samples=64", "--baseline", "pa_alpha=0"],
    ["--preset", "td3bc", "--num-seeds", "5", "--steps", "60"],
    ["--preset", "pars", "--num-seeds", "5", "--steps", "20"],
]


def comparison(r: dict) -> str:
    if "reference" in r:
        ref = r["reference"]
        return f"reference {ref['steps_per_second']:.1f} steps/s: learner {ref['ratio']:.2f}x (paired {ref['ratio_paired']:.2f}x)"
    if "baseline" in r:
        b = r["baseline"]
        return (f"without ({' '.join(b['overrides'])}) {b['steps_per_second']:.1f} steps/s: overhead {100 * b['overhead']:+.0f}% "
                f"(paired {100 * b['overhead_paired']:+.0f}%)")
    if "one_seed" in r:
        o = r["one_seed"]
        return (f"one seed {o['steps_per_second']:.1f} steps/s: {r['num_seeds']} seeds in groups of {r['seed_group']} "
                f"run {o['vectorised_speedup']:.2f}x (paired {o['vectorised_speedup_paired']:.2f}x) {r['num_seeds']} sequential runs")
    return ""


def by_kernel(r: dict) -> str:
    """Each kernel's 2048^2 figure (the peak is the best of them), e.g. `aten 136 / onednn 131`."""
    return " / ".join(f"{name} {flops / 1e9:.0f}" for name, flops in r["peak_flops_by_kernel"].items())


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    # The model name alone does not tell the VM kinds apart (AVX2 and AVX-512 EPYCs both say "AMD EPYC").
    return f"{name} ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="a few steps per row (checks the script, not the machine)")
    args = p.parse_args()
    extra = ["--device", args.device] + (["--steps", "3", "--repeats", "1", "--warmup", "2", "--peak-size", "512",
                                          "--buffer-size", "10000"] if args.quick else [])
    print(f"{time.strftime('%Y-%m-%d')}, {machine(args.device)}, torch {torch.__version__}; "
          f"HalfCheetah shapes (17 obs, 6 actions), batch 256\n")
    print("| `benchmarks/learner.py ...` | steps/s | GFLOP/step | GFLOP/s | % of matmul peak | peak by kernel | same run |")
    print("|---|---|---|---|---|---|---|")
    for row in ROWS:
        with contextlib.redirect_stdout(io.StringIO()):
            r = learner.main(row + extra)
        print(f"| `{' '.join(row)}` | {r['steps_per_second']:.1f} | {r['flops_per_step'] / 1e9:.3f} | "
              f"{r['achieved_flops'] / 1e9:.1f} | {100 * r['peak_ratio']:.0f}% of {r['peak_flops'] / 1e9:.0f} | "
              f"{by_kernel(r)} | {comparison(r)} |", flush=True)


if __name__ == "__main__":
    main()
