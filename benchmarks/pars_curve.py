"""PARS's learning curve and its ablations on one dataset, with the critics' action diagnostics at
every evaluation (issue 23).

    python benchmarks/pars_curve.py --dataset rlservice/halfcheetah-v5/medium-v0 --seeds 3 --steps 300000 \\
        --ablation no_layernorm --ablation reward_scale_1 --ablation no_pa --ablation target_subset_10 \\
        --ablation bc --ablation bc_td3bc --ablation actor_mean

Each configuration (the preset with the dataset's Table 11 row, then each ablation) trains
`--seeds` seeds in one vectorised learner, evaluates every `--eval-every` steps, and logs per
evaluation the normalised score (mean and std over seeds, and rliable's 95% interval over seeds x
episodes: `score_ci_low`, `score_ci_high`, `score_seeds`, `score_episodes`), `action_sensitivity`
((Q(s, a_data) - Q(s, a_uniform)) / |Q|), `ensemble_spread`, `policy_distance`,
`ood_overestimation` and `dormant_ratio` (means over seeds, on the trainer's held-out batch) to one
MLflow run per configuration, plots them to `<out>/pars_curve.png`, and prints JSON. The same JSON
is rewritten to `<out>/pars_curve.json` after every evaluation (the configuration in training has
status "running"), so a long run that is stopped or killed keeps its curve so far; with it, each
configuration's trainer state at its last evaluation goes to `<out>/runs/<configuration>/resume`, and
`--resume` (the same command again) continues from there: configurations that completed their
`--steps` are kept, the one that was stopped or killed goes on exactly as if it had not been (the
same weights, optimiser moments, sampling stream and evaluation episodes), and a completed one with
fewer steps than a larger `--steps` is carried on to them. SIGTERM stops the run at the next step and
starts no further configuration.

Configurations can run in separate processes (one per core) and be put together afterwards:
`--merge A.json --merge B.json` reads the JSON those runs printed, plots every configuration in one
figure and prints a Markdown table of the scores and diagnostics at each evaluation. So can the
seeds of one configuration (`--seeds 1 --seed 0`, `--seed 1`, ...: three seeds on two cores run
faster as three processes than stacked in one learner): merge pools runs of the same configuration
on disjoint seeds into one curve over all their seeds, at the steps every run reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlservice.agent.diagnostics import action_diagnostics, diagnostics  # noqa: E402
from rlservice.config.run import build_run_config  # noqa: E402
from rlservice.data.minari_io import load_offline_data  # noqa: E402
from rlservice.errors import RLServiceError  # noqa: E402
from rlservice.tracking.runs import TrialRun, interval_metrics, run_params, supersede  # noqa: E402
from rlservice.tracking.store import resolve_tracking_uri  # noqa: E402
from rlservice.training.intervals import score_interval  # noqa: E402
from rlservice.training.trainer import Trainer  # noqa: E402


def ablations(action_dim: int) -> dict[str, dict]:
    """Knob overrides on top of the preset, one per piece of PARS (issue 23)."""
    return {
        "no_layernorm": {"agent.critic_layernorm": False},
        # Table 8's Q_min is in units of c = 5: with c = 1 the floor comes from the dataset's r_min.
        "reward_scale_1": {"agent.reward_scale": 1.0, "agent.q_min": None},
        "no_pa": {"agent.pa_alpha": 0.0},
        "target_subset_10": {"agent.target_subset": 10},
        "bc": {"agent.bc_weight": 0.01 * action_dim},
        # TD3+BC's own strength: alpha = 2.5 on the normalised Q is a BC weight of 1 / 2.5 on mean_d.
        "bc_td3bc": {"agent.bc_weight": 1 / 2.5},
        "actor_mean": {"agent.actor_q": "subset_mean", "agent.actor_q_subset": 10},
        # Not a PARS piece: a test of the reading that the values are still propagating. The targets'
        # time constant 1 / (tau (1 - gamma)) is 5k steps at tau = 0.02 instead of 20k at 0.005.
        "fast_targets": {"agent.tau": 0.02},
    }


PANELS = ("normalized_score", "action_sensitivity", "ensemble_spread", "policy_distance",
          "ood_overestimation", "dormant_ratio")
DIAGNOSTICS = (*PANELS[1:], "q_data_mean", "q_pi_mean")  # means over seeds


RESUME = "resume"  # in a configuration's run folder: the trainer's state at its last evaluation


def train_one(name: str, dataset: str, data, overrides: dict, uri: str, experiment: str, progress: bool,
              save: Callable[[dict], None], run_dir: Path, previous: dict | None = None) -> dict:
    """Trains and evaluates one configuration; `save` gets its result so far after every evaluation
    and `run_dir/resume` the state of the step evaluated. With `previous` (its result saved by an
    earlier process) it continues from that state, in a new MLflow run tagged `resumed_from`, or
    starts afresh if that process was killed before its first evaluation; either way the earlier
    run is tagged `continued_in` and ended if its process could not end it."""
    action_dim = int(data.actions.shape[1])
    run_config = build_run_config(dataset, "pars", overrides=overrides, action_dim=action_dim)
    tags = {"issue": "23", "ablation": name}
    if previous is not None and previous["curve"]:
        trainer = resumed_trainer(run_config, run_dir / RESUME, data, previous)
        curve = [c for c in previous["curve"] if c["step"] <= trainer.learner.steps]  # later rows are redone
        tags["resumed_from"] = previous["run_id"]
    else:
        trainer, curve = Trainer(run_config, run_dir, data=data), []
    run = TrialRun(uri, experiment, None, f"pars-curve-{name}", run_params(run_config, action_dim, digest=data.digest),
                   tags)
    for row in curve:  # the new run holds the whole curve
        run.log_metrics(row["step"], {k: v for k, v in row.items() if k != "episode_scores"})
    if previous is not None:
        supersede(uri, previous["run_id"], run.run_id)
    result = {"ablation": name, "status": "running", "steps": curve[-1]["step"] if curve else 0,
              "seeds": run_config.train.num_seeds, "first_seed": run_config.train.seed,
              "episodes_per_seed": run_config.train.eval_episodes, "digest": data.digest, "run_id": run.run_id,
              "curve": curve}
    save(result)  # before the first evaluation too: a resume after a kill then knows which run to end

    def on_eval(step: int, record: dict) -> None:
        # The probe's uniform actions depend on the seed and the step only, so a resumed run draws the same.
        probe_seed = np.random.SeedSequence([run_config.train.seed, step]).generate_state(1)[0]
        probe_g = torch.Generator().manual_seed(int(probe_seed))
        per_seed = {**diagnostics(trainer.learner, trainer.diag_batch, probe_g),
                    **action_diagnostics(trainer.learner, trainer.diag_batch, probe_g)}
        interval = score_interval(record["episode_scores"])  # over seeds x episodes, as everywhere else
        row = {"step": step, "normalized_score": record["normalized_score"],
               "normalized_score_std": record["normalized_score_std"],
               **interval_metrics("score", interval.to_json()),
               **{k: float(per_seed[k].mean()) for k in DIAGNOSTICS}}
        curve.append({**row, "episode_scores": record["episode_scores"]})  # [seeds][episodes], for merge
        run.log_metrics(step, row)
        result["steps"] = step
        save(result)
        trainer.save_evaluated(RESUME)  # after the curve: a kill in between redoes this evaluation

    outcome = trainer.run(on_log=run.log_metrics, on_eval=on_eval, progress=progress)
    run.finish(outcome.status, outcome.history)
    return {**result, "status": outcome.status, "steps": outcome.steps}


def resumed_trainer(run_config, checkpoint: Path, data, previous: dict) -> Trainer:
    """The trainer saved at `checkpoint`, with this command's budget; refused (one line) when the
    checkpoint or the dataset is not the one this command would train."""
    if previous.get("digest") != data.digest:
        raise RLServiceError(f"--resume: {previous['ablation']!r} was trained on other data than "
                             f"{run_config.dataset.id} holds now")
    trainer = Trainer.from_checkpoint(checkpoint, checkpoint.parent, data=data, steps=run_config.train.steps)
    if trainer.config != run_config:
        raise RLServiceError(f"--resume: {checkpoint} was trained with other settings than this command's "
                             "(only --steps may change)")
    return trainer


def write_json(path: Path, run: dict) -> None:
    """Replaces `path` whole, so a reader (or a kill mid-write) never sees half a file."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(run) + "\n")
    part.replace(path)


def plot(results: list[dict], title: str, path: Path) -> Path:
    fig = Figure(figsize=(12, 6.5), layout="constrained")
    for i, key in enumerate(PANELS):
        ax = fig.add_subplot(2, 3, i + 1)
        for r in results:
            ax.plot([c["step"] for c in r["curve"]], [c[key] for c in r["curve"]], marker="o", markersize=2,
                    label=r["ablation"])
        ax.set_title(key)
        ax.set_xlabel("gradient step")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


def table(results: list[dict]) -> str:
    """One row per configuration and evaluation: the score with its interval and what it rests on. A
    configuration that did not complete (still running or killed, diverged, interrupted) says so."""
    lines = ["| configuration | step | score [95% CI] (seeds x episodes) | action sensitivity | ensemble spread "
             "| policy distance | ood overestimation | dormant ratio | Q(s, a_data) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        name = r["ablation"] if r["status"] == "completed" else f"{r['ablation']} ({r['status']})"
        for c in r["curve"]:
            lines.append(f"| {name} | {c['step']:,} | {c['normalized_score']:.1f} [{c['score_ci_low']:.1f}, "
                         f"{c['score_ci_high']:.1f}] ({c['score_seeds']} x {c['score_episodes']}) "
                         f"| {c['action_sensitivity']:.3f} | {c['ensemble_spread']:.2f} | {c['policy_distance']:.2f} "
                         f"| {c['ood_overestimation']:.2f} | {c['dormant_ratio']:.2f} | {c['q_data_mean']:.0f} |")
    return "\n".join(lines)


def pool_seeds(parts: list[dict]) -> dict:
    """One configuration's runs on disjoint seeds as one run over all their seeds: at each step every
    run reached, the mean and std over seeds, the interval over seeds x episodes, and the diagnostics'
    mean over seeds. Not completed if any part is not."""
    ranges = sorted((p.get("first_seed", 0), p.get("first_seed", 0) + p["seeds"]) for p in parts)
    if any(b[0] < a[1] for a, b in zip(ranges, ranges[1:])):
        raise ValueError(f"{parts[0]['ablation']!r} is in several runs with the same seeds {ranges}")
    if any("episode_scores" not in c for p in parts for c in p["curve"]):
        raise ValueError(f"{parts[0]['ablation']!r} is in several runs, one without episode scores to pool")
    by_step = [{c["step"]: c for c in p["curve"]} for p in parts]
    curve = []
    for step in sorted(set.intersection(*(set(s) for s in by_step))):
        rows = [s[step] for s in by_step]
        episodes = [seed for r in rows for seed in r["episode_scores"]]
        seed_means = np.array([np.mean(seed) for seed in episodes])
        weights = np.array([len(r["episode_scores"]) for r in rows])
        row = {"step": step, "normalized_score": float(seed_means.mean()), "normalized_score_std": float(seed_means.std()),
               **interval_metrics("score", score_interval(episodes).to_json()),
               **{k: float(np.average([r[k] for r in rows], weights=weights)) for k in DIAGNOSTICS},
               "episode_scores": episodes}
        curve.append(row)
    unfinished = [p["status"] for p in parts if p["status"] != "completed"]
    return {"ablation": parts[0]["ablation"], "status": unfinished[0] if unfinished else "completed",
            "steps": curve[-1]["step"] if curve else 0, "seeds": int(sum(p["seeds"] for p in parts)),
            "first_seed": ranges[0][0], "curve": curve}


def merge(paths: list[str], out: Path) -> int:
    datasets, results = set(), []
    for path in paths:
        try:
            run = json.loads(Path(path).read_text().strip().splitlines()[-1])
            datasets.add(run["dataset"])
            results += run["results"]
        except (OSError, ValueError, IndexError, KeyError, TypeError) as exc:
            print(f"error: --merge {path}: not the JSON a pars_curve run printed ({exc!r})", file=sys.stderr)
            return 2
    if len(datasets) != 1:
        print(f"error: --merge: runs on different datasets {sorted(datasets)}", file=sys.stderr)
        return 2
    names = list(dict.fromkeys(r["ablation"] for r in results))
    try:
        results = [pool_seeds(parts) if len(parts) > 1 else parts[0]
                   for parts in ([r for r in results if r["ablation"] == n] for n in names)]
    except ValueError as exc:
        print(f"error: --merge: {exc}", file=sys.stderr)
        return 2
    seeds = sorted({res["seeds"] for res in results})
    figure = plot(results, f"PARS on {datasets.pop()}, {'/'.join(map(str, seeds))} seed{'s' * (seeds != [1])}",
                  out / "pars_curve.png")
    print(table(results))
    print(f"figure: {figure}")
    return 0


def saved_results(path: Path, dataset: str, names: list[str]) -> dict[str, dict]:
    """The configurations of the run saved at `path`, by name, for --resume (none if nothing is saved
    there yet, so one command serves from the first start to the last resume)."""
    if not path.exists():
        print(f"--resume: nothing saved in {path} yet; starting afresh", file=sys.stderr)
        return {}
    try:
        run = json.loads(path.read_text())
        results = {r["ablation"]: r for r in run["results"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise RLServiceError(f"--resume: {path} is not a saved pars_curve run ({exc!r})") from None
    if run.get("dataset") != dataset:
        raise RLServiceError(f"--resume: {path} is a run on {run.get('dataset')}, not {dataset}")
    if set(results) - set(names):
        raise RLServiceError(f"--resume: {path} also holds {', '.join(sorted(set(results) - set(names)))}, "
                             "which this command does not name")
    return results


def resumable(result: dict, steps: int) -> bool:
    """Stopped or killed before its end, or completed short of a larger budget; not diverged."""
    return result["status"] in ("running", "interrupted") or (result["status"] == "completed"
                                                              and result["steps"] < steps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", help="required unless --merge")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="the first of the --seeds seeds")
    p.add_argument("--steps", type=int, default=300_000)
    p.add_argument("--eval-every", type=int, default=10_000)
    p.add_argument("--eval-episodes", type=int, default=None, help="default: the domain's (10 on MuJoCo)")
    p.add_argument("--ablation", action="append", default=[], help="repeatable; see ablations() for the names")
    p.add_argument("--no-preset", action="store_true", help="run the ablations only")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--experiment", default="pars-curve")
    p.add_argument("--out", default=".", help="folder for pars_curve.png, pars_curve.json and runs/")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out (same command; --steps may grow)")
    p.add_argument("--merge", action="append", default=[], metavar="JSON",
                   help="repeatable: plot and tabulate earlier runs' printed JSON instead of training")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not out.is_dir():
        print(f"error: --out {out} is not a folder", file=sys.stderr)
        return 2
    if args.merge:
        return merge(args.merge, out)
    if not args.dataset:
        print("error: --dataset is required (or --merge earlier runs' JSON)", file=sys.stderr)
        return 2
    budget = {"train.steps": args.steps, "train.num_seeds": args.seeds, "train.seed": args.seed,
              "train.eval_every": args.eval_every,
              "train.log_every": min(1000, args.eval_every)}
    if args.eval_episodes is not None:
        budget["train.eval_episodes"] = args.eval_episodes
    try:
        build_run_config(args.dataset, "pars", overrides=budget)  # bad input fails before any data is read
        known = ablations(1)
        unknown = [a for a in args.ablation if a not in known]
        if unknown:
            print(f"error: unknown ablation {unknown[0]!r}; choose from {', '.join(known)}", file=sys.stderr)
            return 2
        data = load_offline_data(args.dataset)
        knobs = ablations(int(data.actions.shape[1]))
        uri = resolve_tracking_uri(args.tracking_uri)
        names = ([] if args.no_preset else ["preset"]) + args.ablation
        run = {"benchmark": "pars_curve", "dataset": args.dataset, "tracking_uri": uri,
               "figure": str(out / "pars_curve.png"), "results": []}
        saved = out / "pars_curve.json"
        earlier = saved_results(saved, args.dataset, names) if args.resume else {}
        for n in names:
            previous = earlier.get(n)
            if previous is not None and not resumable(previous, args.steps):
                run["results"].append(previous)  # finished: kept as it is
                continue
            result = train_one(n, args.dataset, data, {**budget, **knobs.get(n, {})}, uri, args.experiment,
                               not args.no_progress,
                               save=lambda partial: write_json(saved, {**run, "results": [*run["results"], partial]}),
                               run_dir=out / "runs" / n, previous=previous)
            run["results"].append(result)
            write_json(saved, run)
            if result["status"] == "interrupted":
                print(f"stopped at step {result['steps']:,} of {n!r}: run the same command with --resume to go on",
                      file=sys.stderr)
                break
    except RLServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    plot(run["results"], f"PARS on {args.dataset}, {args.seeds} seed{'s' * (args.seeds != 1)}", Path(run["figure"]))
    print(json.dumps(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
