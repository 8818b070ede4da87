"""Evaluation in Ray actors, overlapped with training (the Trainer's `Evaluator` protocol).

`submit` hands each seed's policy weights to the least busy actor and returns at once; the
trainer keeps stepping while the actors roll out episodes, but never more than one evaluation
period past the oldest unfinished one (`wait(keep=1)`). Results are released in the order they
were submitted, so evaluations reach the trial (and ASHA) with increasing steps.
"""

from __future__ import annotations

import os
import time
from collections import deque

import ray
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlservice.agent.policy import Policy
from rlservice.training.evaluation import Evaluation, evaluate

# Seconds each evaluation waits before it starts: lets tests make evaluations slower than training.
EVAL_DELAY_ENV = "RLSERVICE_TEST_EVAL_DELAY_S"


@ray.remote
class EvaluationActor:
    """Rolls out policies it receives as state dicts (tensors only: nothing executable travels)."""

    def __init__(self, env_id: str, episodes: int, seed: int, ref_min: float, ref_max: float,
                 actor_shape: tuple[int, int, bool]):
        import torch

        torch.set_num_threads(1)
        self.args = (env_id, episodes, seed, ref_min, ref_max)
        self.actor_shape = actor_shape

    def evaluate(self, policy_state: dict) -> Evaluation:
        time.sleep(float(os.environ.get(EVAL_DELAY_ENV, 0)))
        return evaluate(Policy.from_state_dict(policy_state, *self.actor_shape), *self.args)


class RayEvaluator:
    """A pool of evaluation actors; inside a Tune trial they live in the trial's placement group
    (bundles 1..n, the trial itself holds bundle 0)."""

    def __init__(
        self,
        actors: int,
        cpus: float,
        env_id: str,
        episodes: int,
        seed: int,
        ref_min: float,
        ref_max: float,
        actor_shape: tuple[int, int, bool],
    ):
        group = get_current_placement_group()
        self.actors = [
            EvaluationActor.options(
                num_cpus=cpus,
                scheduling_strategy=(
                    PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=1 + i) if group else None
                ),
            ).remote(env_id, episodes, seed, ref_min, ref_max, actor_shape)
            for i in range(actors)
        ]
        self.busy = [0] * actors
        self.pending: deque[tuple[int, list[ray.ObjectRef]]] = deque()  # in submission order
        self.owner: dict[ray.ObjectRef, int] = {}

    def submit(self, step: int, policies: list[Policy]) -> None:
        refs = []
        for policy in policies:
            i = min(range(len(self.actors)), key=self.busy.__getitem__)
            ref = self.actors[i].evaluate.remote(policy.state_dict())
            self.busy[i] += 1
            self.owner[ref] = i
            refs.append(ref)
        self.pending.append((step, refs))

    def finished(self) -> list[tuple[int, list[Evaluation]]]:
        done = []
        while self.pending:
            step, refs = self.pending[0]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            if len(ready) < len(refs):
                break
            done.append((step, self._take(refs)))
            self.pending.popleft()
        return done

    def wait(self, keep: int = 0) -> list[tuple[int, list[Evaluation]]]:
        done = []
        while len(self.pending) > keep:
            step, refs = self.pending.popleft()
            done.append((step, self._take(refs)))
        return done + self.finished()

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)

    def _take(self, refs: list[ray.ObjectRef]) -> list[Evaluation]:
        results = ray.get(refs)
        for ref in refs:
            self.busy[self.owner.pop(ref)] -= 1
        return results
