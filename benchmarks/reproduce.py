"""Reproduce a published D4RL figure: train N seeds of a preset on a dataset, evaluate each final
policy, and print the mean, a 95% interval and the paper's figure for the matching row.

    python benchmarks/reproduce.py --preset td3bc --dataset rlservice/halfcheetah-v5/medium-v0 --seeds 3 --steps 100000

The N seeds train together in one vectorised learner (`train.num_seeds`). Each final policy is
evaluated on 10 episodes (100 on AntMaze, the domain's default); the interval is the service's own
(rliable's stratified bootstrap over seeds and the episodes of each seed, as every score it reports). The
published figures are SPEC.md's table (D4RL-v2 datasets, 1M steps in the papers): a dataset of
another environment version or budget is comparable only roughly, and the output says which row
it compares with.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlservice.config.presets import parse_dataset  # noqa: E402
from rlservice.config.run import build_run_config, parse_overrides  # noqa: E402
from rlservice.data.minari_io import load_offline_data  # noqa: E402
from rlservice.errors import RLServiceError  # noqa: E402
from rlservice.training.intervals import score_interval  # noqa: E402
from rlservice.training.trainer import InlineEvaluator, Trainer  # noqa: E402

# SPEC.md, Published reference scores (D4RL, normalised): row -> preset -> score.
PUBLISHED = {
    "halfcheetah-medium": {"td3bc": 48.3, "iql": 47.4, "dmg": 54.9, "pars": 64.2},
    "hopper-medium": {"td3bc": 59.3, "iql": 66.3, "dmg": 100.6, "pars": 104.1},
    "walker2d-medium": {"td3bc": 83.7, "iql": 78.3, "dmg": 92.4, "pars": 97.3},
    "halfcheetah-medium-replay": {"td3bc": 44.6, "iql": 44.2, "dmg": 51.4, "pars": 57.0},
    "hopper-medium-replay": {"td3bc": 60.9, "iql": 94.7, "dmg": 101.9, "pars": 103.1},
    "walker2d-medium-replay": {"td3bc": 81.8, "iql": 73.9, "dmg": 89.7, "pars": 95.8},
    "antmaze-umaze": {"td3bc": 78.6, "iql": 87.5, "dmg": 92.4, "pars": 93.8},
    "antmaze-large-diverse": {"td3bc": 0.0, "iql": 47.5, "dmg": 58.8, "pars": 83.2},
}


class FinalScores(InlineEvaluator):
    """Evaluates in this process like InlineEvaluator, and keeps each seed's scores of the last step."""

    def submit(self, step, policies) -> None:
        super().submit(step, policies)
        self.last_step, self.last = self._done[-1]


def reproduce(preset: str, dataset: str, seeds: int, steps: int, overrides: dict | None = None,
              progress: bool = True) -> dict:
    budget = {"train.steps": steps, "train.num_seeds": seeds, "train.eval_every": steps,
              "train.log_every": min(1000, steps)}
    overrides = {**budget, **(overrides or {})}
    build_run_config(dataset, preset, overrides=overrides)  # bad input fails before any data is read
    data = load_offline_data(dataset)
    run_config = build_run_config(dataset, preset, overrides=overrides, action_dim=int(data.actions.shape[1]))
    t = run_config.train
    evaluator = FinalScores(data.env_id, t.eval_episodes, t.seed, data.ref_min_score, data.ref_max_score)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        result = Trainer(run_config, run_dir, data=data).run(evaluator=evaluator, progress=progress)
    wall = time.perf_counter() - started
    scores = np.array([e.score for e in evaluator.last])
    row = parse_dataset(dataset).row
    ci = score_interval(np.stack([e.normalized for e in evaluator.last]))
    return {
        "preset": preset, "dataset": dataset, "row": row, "status": result.status, "steps": result.steps,
        "seeds": seeds, "episodes_per_seed": t.eval_episodes, "scores": scores.round(2).tolist(),
        "mean": round(float(scores.mean()), 2), "ci95": [round(ci.low, 2), round(ci.high, 2)],
        "published": PUBLISHED.get(row, {}).get(preset), "wall_time_s": round(wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a knob (repeatable)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        out = reproduce(args.preset, args.dataset, args.seeds, args.steps, parse_overrides(args.set),
                        progress=not args.no_progress)
    except RLServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps(out))
        return 0
    published = "no published figure for this row" if out["published"] is None else \
        f"published {out['published']:.1f} ({out['row']}, D4RL-v2, SPEC.md)"
    ci = "[{:.1f}, {:.1f}]".format(*out["ci95"])
    print(f"{out['preset']} on {out['dataset']}: {out['status']} after {out['steps']} steps; normalised score "
          f"{out['mean']:.1f}, 95% CI {ci} over {out['seeds']} seeds x {out['episodes_per_seed']} episodes; "
          f"{published}; wall time {out['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
