"""Learner throughput: gradient steps/s and achieved FLOP/s against the machine's matmul peak.

    python benchmarks/learner.py [--preset P] [--set k=v ...] [--steps N] [--device D]
        [--num-seeds K] [--seed-group G] [--compile] [--matmul K] [--baseline k=v ...]
        [--compare-reference] [--threads T] [--json]

In one process it measures
- peak: the best FLOP/s of a large square fp32 matmul (2 n^3 FLOP) on every fp32 matmul kernel
  the build offers (ATen's default: MKL on a CPU, cuBLAS on a GPU; oneDNN's linear on a CPU),
  before and after the rest; the best kernel's is the machine's peak. Each kernel is also timed
  at the critic ensemble's hidden layer (members x [batch, hidden] @ [hidden, hidden]);
- ceiling: the FLOP/s of the step's own matmuls (the shapes and transposes of the learner's
  forward and backward, from rlservice.agent.flops, on the learner's kernel) replayed alone,
  with nothing elementwise in between: the most the learner could reach with these matrix
  sizes. The step's time splits into these matmuls' time and everything else;
- learner: gradient steps/s on a synthetic HalfCheetah-shaped buffer on the device (17 obs,
  6 act), sampled exactly as the Trainer does, and the FLOP/s that achieves.
With `--baseline k=v`, the same config with those overrides is timed too (e.g. noise_sigma=0 to
price PANI's noise); with `--num-seeds K > 1`, a one-seed learner is timed to compare one
K-seed run with K sequential runs; with `--compare-reference`, the plain TD3+BC step of
reference_td3bc.py. Candidates are timed in interleaved repeats and the best repeat of each
is reported: on a shared machine the best repeat is the least disturbed one. Each comparison
also gives the median over repeats of the ratio between neighbouring repeats ("paired"), which
is steadier where the machine's speed drifts between repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from reference_td3bc import TD3BC, synthetic_data

from rlservice.agent.flops import Matmul, cycle_matmuls, step_flops
from rlservice.agent.learner import Learner, matmul_kernel, seed_group_size
from rlservice.agent.matmul import (
    Kernel,
    batched_linear,
    member_linear,
    onednn_available,
)
from rlservice.config.run import RunConfig, build_run_config, parse_overrides
from rlservice.data.buffer import ReplayBuffer

OBS_DIM, ACT_DIM = 17, 6  # HalfCheetah
DATASET = "bench/halfcheetah-v0"  # a MuJoCo id: presets take their MuJoCo values


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def kernels(device: torch.device) -> list[Kernel]:
    """The fp32 matmul kernels this build offers on `device`."""
    return ["aten", "onednn"] if device.type == "cpu" and onednn_available() else ["aten"]


def matmul_peak(device: torch.device, n: int, repeats: int) -> dict[Kernel, float]:
    """FLOP/s of an n x n fp32 matmul on each kernel."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    b_t = b.mT.contiguous()  # oneDNN's linear takes the weight as [out, in]
    ops = {"aten": lambda: a @ b, "onednn": lambda: torch.ops.mkldnn._linear_pointwise(a, b_t, None, "none", [], "")}
    return {k: 2 * n**3 / best_seconds(ops[k], device, repeats) for k in kernels(device)}


def ensemble_layer_flops(device: torch.device, members: int, rows: int, width: int, repeats: int) -> dict[Kernel, float]:
    """FLOP/s of a hidden layer of the critic ensemble (members x [rows, width] @ [width, width]
    plus bias) on each kernel, as BatchedLinear runs it."""
    x, w = torch.randn(members, rows, width, device=device), torch.randn(members, width, width, device=device)
    bias = torch.randn(members, 1, width, device=device)
    return {k: 2 * members * rows * width**2 / best_seconds(lambda k=k: batched_linear(k, x, w, bias), device, repeats)
            for k in kernels(device)}


def matmul_ceiling(matmuls: list[Matmul], kernel: Kernel, device: torch.device, repeats: int) -> float:
    """FLOP/s of `matmuls` run back to back with the kernels the learner's forward and backward
    use (rlservice.agent.networks.BatchedLinear on `kernel`; single-output heads in their own
    orientation)."""
    ops = []
    for m in matmuls:
        x = torch.randn(m.members, m.rows, m.in_features, device=device)
        w = torch.randn(m.members, m.in_features, m.out_features, device=device)
        g = torch.randn(m.members, m.rows, m.out_features, device=device)
        bias = torch.randn(m.members, 1, m.out_features, device=device)
        if m.out_features == 1:
            kinds = {"forward": lambda x=x, w=w, bias=bias: torch.baddbmm(bias, w.mT, x.mT),
                     "weight_grad": lambda x=x, g=g: torch.bmm(g.mT, x),
                     "input_grad": lambda g=g, w=w: g * w.mT}
        elif kernel == "onednn":  # as rlservice.agent.matmul's backward runs them
            kinds = {"forward": lambda x=x, w=w, bias=bias: member_linear(x, w.mT, bias),
                     "weight_grad": lambda x=x, g=g: member_linear(g.mT, x.mT, None),
                     "input_grad": lambda g=g, w=w: member_linear(g, w, None)}
        else:
            kinds = {"forward": lambda x=x, w=w, bias=bias: torch.baddbmm(bias, x, w),
                     "weight_grad": lambda x=x, g=g: torch.bmm(x.mT, g),
                     "input_grad": lambda g=g, w=w: torch.bmm(g, w.mT)}
        ops.append(kinds[m.kind])

    def run():
        for op in ops:
            op()

    return sum(m.flops for m in matmuls) / best_seconds(run, device, repeats)


@dataclass
class Candidate:
    """Something that takes gradient steps; `rates` collects steps/s of each timed repeat."""

    name: str
    step: Callable[[], None]
    warmup_seconds: float = 0.0
    rates: list[float] = field(default_factory=list)


def learner_candidate(name: str, run: RunConfig, buffer: ReplayBuffer, warmup: int) -> Candidate:
    """The learner as the Trainer builds it (seed groups and compilation from `run.train`)."""
    t = run.train
    learner = Learner(run.agent, OBS_DIM, ACT_DIM, reward_min=-1.0, seeds=t.num_seeds, seed=t.seed,
                      device=t.device, compile=t.compile, seed_group=seed_group_size(run.agent, t), matmul=t.matmul)

    def step():
        learner.update(buffer.sample(learner.generator, t.num_seeds, t.batch_size))

    return warmed(Candidate(name, step), warmup, torch.device(t.device))


def reference_candidate(run: RunConfig, data: dict[str, np.ndarray], warmup: int) -> Candidate:
    agent = TD3BC(OBS_DIM, ACT_DIM, run.train.device, hidden=run.agent.critic_hidden)
    return warmed(Candidate("reference", lambda: agent.train_step(data, run.train.batch_size)), warmup,
                  torch.device(run.train.device))


def warmed(candidate: Candidate, steps: int, device: torch.device) -> Candidate:
    start = time.perf_counter()
    for _ in range(steps):
        candidate.step()
    synchronize(device)
    candidate.warmup_seconds = time.perf_counter() - start
    return candidate


def busy_cpu_seconds() -> float | None:
    """CPU time all processes of the machine have used since boot (Linux), else None."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def time_interleaved(candidates: list[Candidate], steps: int, repeats: int, device: torch.device) -> float | None:
    """Each repeat times `steps` steps of every candidate, synchronising only at the end.
    Returns how many CPU cores other processes kept busy meanwhile, on average (None off Linux)."""
    busy, own, wall = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    for _ in range(repeats):
        for c in candidates:
            start = time.perf_counter()
            for _ in range(steps):
                c.step()
            synchronize(device)
            c.rates.append(steps / (time.perf_counter() - start))
    if busy is None:
        return None
    others = busy_cpu_seconds() - busy - (time.process_time() - own)
    return max(0.0, others / (time.perf_counter() - wall))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="td3bc")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="K=V", help="agent/train override")
    p.add_argument("--steps", type=int, default=200, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first (they include compilation)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    p.add_argument("--num-seeds", type=int, default=1)
    p.add_argument("--seed-group", type=int, help="seeds run together (default: as the Trainer chooses)")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks")
    p.add_argument("--matmul", choices=["auto", "aten", "onednn"], default="auto",
                   help="the learner's matmul kernel (train.matmul); auto: the faster one here")
    p.add_argument("--baseline", action="append", default=[], metavar="K=V",
                   help="also time the config with these overrides and report the overhead over it")
    p.add_argument("--compare-reference", action="store_true", help="also time reference_td3bc.py (td3bc only)")
    p.add_argument("--buffer-size", type=int, default=1_000_000)
    p.add_argument("--peak-size", type=int, default=2048, help="n of the n x n matmul that measures the peak")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare_reference and args.preset != "td3bc":
        p.error("--compare-reference needs --preset td3bc (the reference is TD3+BC)")

    overrides = {**parse_overrides(args.sets), "train.num_seeds": args.num_seeds, "train.device": args.device,
                 "train.seed_group": args.seed_group, "train.compile": args.compile, "train.matmul": args.matmul}
    run = build_run_config(DATASET, args.preset, overrides=overrides)
    device, cfg, k, batch = torch.device(args.device), run.agent, args.num_seeds, run.train.batch_size

    data = synthetic_data(args.buffer_size, OBS_DIM, ACT_DIM)
    buffer = ReplayBuffer(data["obs"], data["actions"], data["rewards"][:, 0], data["next_obs"], data["dones"][:, 0],
                          device=device)
    candidates = [learner_candidate("learner", run, buffer, args.warmup)]
    if args.baseline:
        base = build_run_config(DATASET, args.preset, overrides={**overrides, **parse_overrides(args.baseline)})
        candidates.append(learner_candidate("baseline", base, buffer, args.warmup))
    if k > 1:
        one = build_run_config(DATASET, args.preset, overrides={**overrides, "train.num_seeds": 1})
        candidates.append(learner_candidate("one_seed", one, buffer, args.warmup))
    if args.compare_reference:
        candidates.append(reference_candidate(run, data, args.warmup))

    kernel = matmul_kernel(args.matmul, device)  # what the learner runs on (auto: measured once, cached)
    by_kernel = matmul_peak(device, args.peak_size, repeats=10)
    ensemble = ensemble_layer_flops(device, k * cfg.num_critics, cfg.critic_rows(batch), cfg.critic_hidden, repeats=10)
    ceiling = matmul_ceiling(cycle_matmuls(cfg, OBS_DIM, ACT_DIM, batch, k), kernel, device, repeats=10)
    other_cores = time_interleaved(candidates, args.steps, args.repeats, device)
    after = matmul_peak(device, args.peak_size, repeats=10)  # the machine's speed drifts
    by_kernel = {name: max(flops, after[name]) for name, flops in by_kernel.items()}
    peak = max(by_kernel.values())

    flops = step_flops(cfg, OBS_DIM, ACT_DIM, batch, k)
    main_c = candidates[0]
    rate = max(main_c.rates)
    matmul_seconds = flops / ceiling
    result = {
        "preset": args.preset, "overrides": args.sets, "device": str(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "num_seeds": k, "seed_group": seed_group_size(cfg, run.train),
        "batch_size": batch, "obs_dim": OBS_DIM,
        "act_dim": ACT_DIM, "compile": args.compile, "matmul": kernel, "steps": args.steps, "repeats": args.repeats,
        "peak_flops": peak, "peak_flops_by_kernel": by_kernel, "peak_size": args.peak_size,
        "ensemble_layer_flops_by_kernel": ensemble, "ceiling_flops": ceiling, "ceiling_ratio": ceiling / peak,
        "matmul_seconds_per_step": matmul_seconds, "other_seconds_per_step": 1 / rate - matmul_seconds,
        "flops_per_step": flops, "steps_per_second": rate,
        "steps_per_second_median": statistics.median(main_c.rates),
        "achieved_flops": flops * rate, "peak_ratio": flops * rate / peak,
        "warmup_seconds": main_c.warmup_seconds, "other_processes_cores": other_cores,
    }
    by_name = {c.name: c for c in candidates}
    if "baseline" in by_name:
        base = by_name["baseline"].rates
        result["baseline"] = {"overrides": args.baseline, "steps_per_second": max(base), "overhead": max(base) / rate - 1,
                              "overhead_paired": paired_median(base, main_c.rates) - 1}
    if "one_seed" in by_name:
        one = [r / k for r in by_name["one_seed"].rates]  # K sequential one-seed runs advance this many steps/s
        result["one_seed"] = {"steps_per_second": max(one) * k, "sequential_steps_per_second": max(one),
                              "vectorised_speedup": rate / max(one),
                              "vectorised_speedup_paired": paired_median(main_c.rates, one)}
    if "reference" in by_name:
        ref = by_name["reference"].rates
        result["reference"] = {"steps_per_second": max(ref), "ratio": rate / max(ref),
                               "ratio_paired": paired_median(main_c.rates, ref)}
    print(json.dumps(result) if args.json else report(result))
    return result


def paired_median(rates: list[float], others: list[float]) -> float:
    """Median over repeats of rates[i] / others[i]: each repeat against the one timed next to it,
    which discounts the machine's drift between repeats (the best repeats may come from
    different minutes)."""
    return statistics.median(a / b for a, b in zip(rates, others, strict=True))


def report(r: dict) -> str:
    g = 1e9
    lines = [
        f"{r['preset']} {' '.join(r['overrides'])} | {r['device']}, torch {r['torch']}, {r['threads']} threads, "
        f"{r['num_seeds']} seed(s) in groups of {r['seed_group']}, batch {r['batch_size']}, compile={r['compile']}, "
        f"matmul={r['matmul']}",
        *(f"matmul peak {name:7}{flops / g:8.1f} GFLOP/s at {r['peak_size']}^2; "
          f"{r['ensemble_layer_flops_by_kernel'][name] / g:.1f} GFLOP/s at the ensemble's hidden layer"
          for name, flops in r["peak_flops_by_kernel"].items()),
        f"step's matmuls     {r['ceiling_flops'] / g:8.1f} GFLOP/s alone ({100 * r['ceiling_ratio']:.0f}% of peak)",
        f"learner            {r['steps_per_second']:8.1f} steps/s (median {r['steps_per_second_median']:.1f}), "
        f"{r['flops_per_step'] / g:.3f} GFLOP/step, {r['achieved_flops'] / g:.1f} GFLOP/s = "
        f"{100 * r['peak_ratio']:.0f}% of peak; warm-up {r['warmup_seconds']:.1f} s",
        f"per step           {1e3 * r['matmul_seconds_per_step']:.2f} ms in matmuls (at the rate they reach alone), "
        f"{1e3 * r['other_seconds_per_step']:.2f} ms everything else",
    ]
    if r["other_processes_cores"] is not None:
        lines.append(f"other processes kept {r['other_processes_cores']:.2f} of {os.cpu_count()} cores busy while timing")
    if "baseline" in r:
        b = r["baseline"]
        lines.append(f"baseline {' '.join(b['overrides'])}: {b['steps_per_second']:.1f} steps/s; "
                     f"overhead {100 * b['overhead']:+.1f}% (paired repeats: {100 * b['overhead_paired']:+.1f}%)")
    if "one_seed" in r:
        o = r["one_seed"]
        lines.append(f"one seed alone     {o['steps_per_second']:8.1f} steps/s, so {r['num_seeds']} seeds in sequence "
                     f"advance {o['sequential_steps_per_second']:.1f} steps/s; the {r['num_seeds']}-seed run is "
                     f"{o['vectorised_speedup']:.2f}x that (paired repeats: {o['vectorised_speedup_paired']:.2f}x)")
    if "reference" in r:
        ref = r["reference"]
        lines.append(f"reference TD3+BC   {ref['steps_per_second']:8.1f} steps/s; learner / reference = {ref['ratio']:.2f}x "
                     f"(paired repeats: {ref['ratio_paired']:.2f}x)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
