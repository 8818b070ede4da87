"""How fast can a LayerNorm critic's value climb to its scale c * r / (1 - gamma)? (issue 23)

A LayerNorm critic's output is Q = w . h + b with h = ReLU(LN(...)) bounded features. Under Adam
each parameter moves by about lr per step, so through the head alone Q rises by at most about
lr * (sum_i |h_i| + 1) per step (the layers below add the growth of h, e.g. LN's gain). Reaching
V* = c * r / (1 - gamma) then takes of the order of V* / (lr * (sum|h| + 1)) steps.

This script trains the project's learner (PARS knobs: LN critics, min-over-ensemble actor, no BC,
PA on) on a synthetic dataset whose reward is almost constant (r = 1 - 0.5 * mean_d a_d^2, no
terminals, so V* ~ c * 0.83 / (1 - gamma); the data actions are uniform, so the true action
sensitivity against uniform actions is 0: a check that the critics invent no preference), logs Q(s, a_data), the head bound and the action
sensitivity every `--log-every` steps, and prints JSON: per configuration (reward scale, critic
lr) the measured slope of Q against the bound, and the steps the bound needs to reach V*.

    python benchmarks/pars_value_growth.py --steps 2000 --log-every 250
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from rlservice.agent.learner import Batch, Learner
from rlservice.config.run import AgentConfig

OBS, ACT = 17, 6  # HalfCheetah's sizes


def synthetic_data(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n + 1, OBS, generator=g)
    actions = 2 * torch.rand(n, ACT, generator=g) - 1
    rewards = 1.0 - 0.5 * actions.square().mean(dim=-1)
    return {"obs": obs[:-1], "next_obs": obs[1:], "actions": actions, "rewards": rewards, "dones": torch.zeros(n)}


def batch(data: dict[str, torch.Tensor], size: int, g: torch.Generator) -> Batch:
    idx = torch.randint(len(data["rewards"]), (size,), generator=g)
    return Batch(*(data[k][idx].unsqueeze(0) for k in ("obs", "actions", "rewards", "next_obs", "dones")))


@torch.no_grad()
def probe(lrn: Learner, b: Batch, g: torch.Generator) -> dict[str, float]:
    acts: list[torch.Tensor] = []
    q_all = lrn.critic(b.obs, b.actions, activations=acts)[0]  # [N, B]
    h = acts[-1]  # [N, B, H], the head's input
    uniform = 2 * torch.rand(b.actions.shape, generator=g) - 1
    q_uni = lrn.critic(b.obs, uniform)[0].min(dim=0).values
    q_data = q_all.min(dim=0).values
    return {
        "q_data": float(q_data.mean()),
        "sum_abs_h": float(h.abs().sum(dim=-1).mean()),
        "ln_gain": float(lrn.critic.net.norms[-1].weight.abs().mean()) if lrn.critic.net.norms is not None else 1.0,
        "spread": float(q_all.std(dim=0).mean()),
        "action_sensitivity": float((q_data - q_uni).mean() / q_data.abs().mean()),
    }


def target_bound(step: int, tau: float, discount: float) -> float:
    """The fraction of V* the target critics can hold after `step` steps, starting from 0, even if
    the online critics fitted their TD target at once: Q' moves by tau * (c r + gamma Q' - Q') per
    step, so Q'/V* = 1 - (1 - tau (1 - gamma))^step (time constant 1 / (tau (1 - gamma)) steps)."""
    return 1.0 - (1.0 - tau * (1.0 - discount)) ** step


def run(reward_scale: float, critic_lr: float, tau: float, steps: int, log_every: int, critics: int, seed: int) -> dict:
    cfg = AgentConfig(num_critics=critics, critic_layernorm=True, reward_scale=reward_scale, critic_lr=critic_lr, tau=tau,
                      pa_alpha=1e-4, policy_noise=0.0, target_subset=2, bc_weight=0.0, actor_q="min")
    data = synthetic_data(20_000, seed)
    lrn = Learner(cfg, OBS, ACT, reward_min=float(data["rewards"].min()), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    probe_batch, probe_g = batch(data, 1024, g), torch.Generator().manual_seed(seed + 2)
    v_star = reward_scale * float(data["rewards"].mean()) / (1 - cfg.discount)
    log = [{"step": 0, **probe(lrn, probe_batch, probe_g), "target_bound": 0.0}]
    for step in range(1, steps + 1):
        lrn.update(batch(data, 256, g))
        if step % log_every == 0:
            log.append({"step": step, **probe(lrn, probe_batch, probe_g),
                        "target_bound": target_bound(step, tau, cfg.discount) * v_star})
            print(f"c={reward_scale:g} lr={critic_lr:g} step {step}/{steps}: Q {log[-1]['q_data']:.2f}",
                  file=sys.stderr, flush=True)
    # Slope over the second half (past Adam's warm-up), and the head bound on the same steps.
    half = log[len(log) // 2:]
    steps_ = np.array([r["step"] for r in half], dtype=float)
    slope = float(np.polyfit(steps_, [r["q_data"] for r in half], 1)[0])
    bound = critic_lr * (float(np.mean([r["sum_abs_h"] for r in half])) + 1.0)
    return {
        "reward_scale": reward_scale, "critic_lr": critic_lr, "tau": tau, "num_critics": critics, "steps": steps,
        "v_star": v_star, "q_final": log[-1]["q_data"], "fraction_of_v_star": log[-1]["q_data"] / v_star,
        "target_bound_fraction": target_bound(steps, tau, cfg.discount),
        "slope_per_step": slope, "head_bound_per_step": bound, "slope_over_bound": slope / bound,
        "steps_to_v_star_at_bound": v_star / bound, "steps_to_v_star_at_slope": v_star / slope if slope > 0 else None,
        "log": log,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--log-every", type=int, default=250)
    p.add_argument("--critics", type=int, default=2, help="ensemble size (PARS uses 10; 2 keeps this cheap)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", default="5:3e-4,1:3e-4,5:1e-3,5:3e-4:0.02",
                   help="reward_scale:critic_lr[:tau] (tau default 0.005), comma-separated")
    args = p.parse_args(argv)
    if args.steps < 2 * args.log_every:
        print("pars_value_growth: --steps must be at least 2 x --log-every", file=sys.stderr)
        return 2
    configs = [(*(float(x) for x in c.split(":")), 0.005)[:3] for c in args.configs.split(",")]
    results = [run(c, lr, tau, args.steps, args.log_every, args.critics, args.seed) for c, lr, tau in configs]
    print(json.dumps({"benchmark": "pars_value_growth", "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
