"""Confirmation: a job's best candidates evaluated again, after the search, on fresh episodes.

The search ranks trials by evaluations made during training (the selection score: a few
episodes each, and the maximum over many of them, so optimistic). Here the `confirm.top_k`
trials with the best selection scores are rolled out again, at each of `confirm.checkpoints`
(the best evaluation's weights and the final ones), `confirm.episodes` episodes per seed on the
confirmation seeds (config.tuning: disjoint from every seed the trials were evaluated on). Each
seed of each candidate rolls out in its own Ray task, all at once; the scores come back with
their rliable intervals. A champion registered before confirmation existed is confirmed the
same way, so that promotion compares like with like.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import ray

from rlservice.agent.policy import Policy
from rlservice.config.tuning import TuningJob, confirmation_seeds
from rlservice.data.minari_io import evaluation_env
from rlservice.tracking import registry, runs
from rlservice.tracking.export import seed_policies
from rlservice.tracking.tuning_runs import JobTracking
from rlservice.training.evaluation import Evaluation, evaluate
from rlservice.training.intervals import score_interval


@ray.remote(num_cpus=1)
def _rollouts(policy_state: dict, actor_shape: tuple[int, int, bool], env_id: str, episodes: int, seed: int,
              ref_min: float, ref_max: float) -> Evaluation:
    import torch

    torch.set_num_threads(1)
    return evaluate(Policy.from_state_dict(policy_state, *actor_shape), env_id, episodes, seed, ref_min, ref_max)


def candidates(job: TuningJob, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The (trial, checkpoint) pairs to confirm: the top_k ranked trials by selection score, each at
    every checkpoint kind the job names."""
    ranked = sorted((t for t in trials if t["status"] in runs.RANKED and t["score"] is not None),
                    key=lambda t: -t["score"])[: job.confirm.top_k]
    return [
        {"trial": t["trial"], "name": t.get("name") or t["trial"], "run_id": t["run_id"], "checkpoint_kind": kind,
         "selection_score": t["score"],
         "checkpoint": t["checkpoint"] if kind == "best" else t.get("final_checkpoint")}
        for t in ranked for kind in job.confirm.checkpoints
    ]


def champion_candidate(job: TuningJob, target: JobTracking) -> dict[str, Any] | None:
    """The model's champion on this dataset when it carries no confirmed score yet."""
    version = registry.unconfirmed_champion(target.uri, job.mlflow.registered_model, job.dataset.id)
    if version is None:
        return None
    return {"trial": None, "name": f"{version.name} v{version.version} (champion)",
            "run_id": version.tags.get("run_id", version.run_id), "checkpoint_kind": "registered",
            "selection_score": None, "checkpoint": None, "model": version.name, "version": version.version}


def confirm(job: TuningJob, target: JobTracking, todo: list[dict[str, Any]],
            progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Roll out every candidate of `todo` on the confirmation seeds; returns them with `confirmed`
    (an Interval's dict) and `confirmed_seeds` (the environment seeds the episodes started from).
    `progress(done, total)` hears of every finished rollout task."""
    if not todo:
        return []
    env_id, ref_min, ref_max = evaluation_env(job.dataset.id)
    episodes = job.confirm.episodes_for(job.dataset.id)
    seeds = confirmation_seeds(episodes)
    tasks: list[list[ray.ObjectRef]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for candidate in todo:
            policies, shape = seed_policies(_checkpoint(target, candidate, Path(tmp)))
            tasks.append([_rollouts.remote(p.state_dict(), shape, env_id, episodes, seeds.start, ref_min, ref_max)
                          for p in policies])
    pending = [ref for refs in tasks for ref in refs]
    total = len(pending)
    while pending:
        _, pending = ray.wait(pending, num_returns=1)
        if progress:
            progress(total - len(pending), total)
    out = []
    for candidate, refs in zip(todo, tasks):
        evaluations: list[Evaluation] = ray.get(refs)
        out.append({**candidate,
                    "confirmed": score_interval([e.normalized for e in evaluations]).to_json(),
                    "confirmed_seeds": sorted({s for e in evaluations for s in e.seeds})})
    return out


def _checkpoint(target: JobTracking, candidate: dict[str, Any], tmp: Path) -> Path:
    if candidate["checkpoint_kind"] == "registered":
        directory, _ = registry.download_checkpoint(
            target.uri, f"{candidate['model']}/{candidate['version']}", tmp / "registered")
        return directory
    artifact = runs.CHECKPOINT if candidate["checkpoint_kind"] == "best" else runs.FINAL_CHECKPOINT
    return runs.local_checkpoint(target.uri, candidate["run_id"], candidate["checkpoint"], tmp, artifact)
