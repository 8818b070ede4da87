"""The dataset factory: D4RL-style Minari datasets of any gymnasium MuJoCo-like env, built locally.

Qualities (D4RL semantics), all from one behaviour agent per (env, seed, budget), see
`rlservice.jobs.behaviour_agent`:
- `random`: uniform random actions;
- `medium`: rollouts of the checkpoint whose evaluation return is closest to a third of the way
  from the random policy's return to the expert's (for positive returns that is about a third of
  the expert return, as the issue asks; measured from random it also holds for envs whose
  returns are negative);
- `medium-replay`: the agent's replay buffer up to the medium checkpoint (its size is set by the
  agent, not by `dataset_steps`);
- `expert`: rollouts of the final agent;
- `medium-expert`: the medium dataset's episodes followed by the expert dataset's (collected
  again with the same seeds, so they are the same episodes): 2 x `dataset_steps` steps.

Collection: the checkpoint's deterministic actor plus Gaussian noise of std `COLLECTION_NOISE`
in normalised action units, the exploration noise the agent was trained with. D4RL collected
with its stochastic SAC policies; some noise keeps the data from being a single thin trajectory
tube, so offline learners see the consequences of actions near the policy's.

Reference scores: `ref_min_score` is the random policy's mean return (`random_policy_score`);
`ref_max_score` is the final agent's mean return over its `eval_episodes` (>= 10) deterministic
evaluation episodes, so normalised scores are 0 for random and about 100 for the expert dataset
(a little less: the dataset is collected with noise). A `random` dataset built without
`budget_steps` has no agent: it keeps D4RL's expert return for the envs D4RL has, and other
envs are refused with a hint to pass `budget_steps` (which trains or reuses the agent).
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from rlservice.agent.policy import Policy
from rlservice.data.minari_io import (
    REFERENCE_EPISODES,
    Episode,
    collect_episodes,
    d4rl_ref_max_score,
    dataset_id_for,
    ensure_writable,
    random_policy_score,
    write_dataset,
)
from rlservice.errors import ConfigError, DatasetError
from rlservice.jobs import behaviour_agent
from rlservice.runtime.rollout import explore, to_env

QUALITIES = ("random", "medium", "medium-replay", "expert", "medium-expert")
COLLECTION_NOISE = 0.1
DEFAULT_DATASET_STEPS = 1_000_000  # D4RL's size (medium-expert: twice that)
DEFAULT_BUDGET_STEPS = 1_000_000  # D4RL trained its SAC experts for 1M steps


def check_request(env_id: str, quality: str, *, budget_steps: int | None, dataset_steps: int | None, seed: int,
                  overwrite: bool) -> str:
    """Refuse bad input before any compute; return the dataset id."""
    if quality not in QUALITIES:
        raise ConfigError(f"quality={quality!r} is unknown; choose one of {', '.join(QUALITIES)}")
    for name, value in (("budget_steps", budget_steps), ("dataset_steps", dataset_steps)):
        if value is not None and value < 1:
            raise ConfigError(f"{name}={value} must be a positive number of env steps")
    if seed < 0:
        raise ConfigError(f"seed={seed} must be >= 0")
    if quality == "medium-replay" and dataset_steps is not None:
        raise ConfigError("dataset_steps does not apply to medium-replay: its size is the agent's replay buffer up to "
                          "the medium checkpoint")
    _check_env(env_id)
    try:
        dataset_id = dataset_id_for(env_id, quality)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    ensure_writable(dataset_id, overwrite=overwrite)
    if quality == "random" and budget_steps is None:
        _d4rl_ref_max(env_id)
    return dataset_id


def build_dataset(
    env_id: str,
    quality: str,
    *,
    budget_steps: int | None = None,
    dataset_steps: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    behaviour_config: behaviour_agent.BehaviourConfig | None = None,
) -> str:
    """Build one dataset (training or reusing the behaviour agent as needed) and return its id."""
    dataset_id = check_request(env_id, quality, budget_steps=budget_steps, dataset_steps=dataset_steps, seed=seed,
                               overwrite=overwrite)
    steps = dataset_steps or DEFAULT_DATASET_STEPS
    if quality == "random" and budget_steps is None:
        agent, ref_max = None, _d4rl_ref_max(env_id)
    else:
        agent = behaviour_agent.load_or_train(env_id, seed, budget_steps or DEFAULT_BUDGET_STEPS, behaviour_config, progress)
        ref_max = agent.expert.return_mean
    ref_min = random_policy_score(env_id)
    if not ref_max > ref_min:
        raise DatasetError(
            f"the behaviour agent of {env_id} reached a return of {ref_max:.1f}, not above the random policy's "
            f"{ref_min:.1f}; train it longer (a larger budget_steps)"
        )

    checkpoints = _checkpoints(agent, quality, ref_min)
    episodes = _episodes(env_id, quality, agent, checkpoints, steps, seed, progress)
    total = sum(len(ep.actions) for ep in episodes)
    metadata = {"quality": quality, "dataset_steps": total, "collection_seed": seed,
                "ref_min_episodes": REFERENCE_EPISODES}
    if quality not in ("random", "medium-replay"):
        metadata["collection_noise"] = COLLECTION_NOISE
    if agent is not None:
        metadata["behaviour_agent"] = _describe(agent, checkpoints)
    write_dataset(dataset_id, env_id, episodes, ref_min_score=ref_min, ref_max_score=ref_max, metadata=metadata,
                  description=_description(env_id, quality, total, agent), overwrite=overwrite)
    return dataset_id


def _checkpoints(agent: behaviour_agent.BehaviourAgent | None, quality: str, ref_min: float) -> list[behaviour_agent.Checkpoint]:
    """The agent checkpoints whose behaviour the dataset holds."""
    if quality == "random":
        return []
    medium = agent.medium(ref_min)
    return {"medium": [medium], "medium-replay": [medium], "expert": [agent.expert],
            "medium-expert": [medium, agent.expert]}[quality]


def _episodes(env_id: str, quality: str, agent: behaviour_agent.BehaviourAgent | None,
              checkpoints: list[behaviour_agent.Checkpoint], steps: int, seed: int, progress: bool) -> list[Episode]:
    if quality == "random":
        return _collect(env_id, _uniform(env_id, seed), steps, seed, "random", progress)
    if quality == "medium-replay":
        env = gym.make(env_id)
        env.close()
        return agent.buffer().episodes(env.action_space.low, env.action_space.high, end=checkpoints[0].env_step)
    return [
        episode
        for c in checkpoints
        for episode in _collect(env_id, _noisy(agent.policy(c), seed), steps, seed,
                                f"{quality} (checkpoint at step {c.env_step})", progress)
    ]


def _check_env(env_id: str) -> None:
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as exc:
        raise ConfigError(f"env={env_id!r} is not a registered gymnasium environment ({exc})") from None
    if spec.max_episode_steps is None:
        raise ConfigError(f"env={env_id!r} has no time limit (max_episode_steps), so its episodes may never end")
    try:
        env = gym.make(spec)
    except Exception as exc:  # e.g. a missing simulator
        raise ConfigError(f"env={env_id!r} cannot be created: {type(exc).__name__}: {exc}") from None
    env.close()
    for kind, space in (("observation", env.observation_space), ("action", env.action_space)):
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ConfigError(f"env={env_id!r} has {kind} space {space}; only flat Box spaces (continuous control) work")
    if not (np.isfinite(env.action_space.low).all() and np.isfinite(env.action_space.high).all()):
        raise ConfigError(f"env={env_id!r} has an unbounded action space {env.action_space}")


def _d4rl_ref_max(env_id: str) -> float:
    try:
        return d4rl_ref_max_score(env_id)
    except DatasetError as exc:
        raise DatasetError(f"{exc}: pass budget_steps (--budget-steps) to train the expert agent") from None


def _uniform(env_id: str, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    env = gym.make(env_id)
    env.close()
    space = env.action_space
    space.seed(seed)
    return lambda _obs: space.sample()


def _noisy(policy: Policy, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    return lambda obs: to_env(explore(policy, obs, COLLECTION_NOISE, rng), policy.action_low, policy.action_high)


def _collect(env_id: str, act: Callable, steps: int, seed: int, what: str, progress: bool) -> list[Episode]:
    with tqdm(total=steps, desc=f"collecting {what}", unit="step", disable=not progress, dynamic_ncols=True,
              mininterval=0.5) as bar:
        def counted(obs: np.ndarray) -> np.ndarray:
            bar.update()
            return act(obs)

        return collect_episodes(env_id, counted, steps, seed)


def _describe(agent: behaviour_agent.BehaviourAgent, checkpoints: list[behaviour_agent.Checkpoint]) -> dict:
    return {
        "algorithm": agent.info["algorithm"],
        "budget_steps": agent.budget,
        "seed": agent.seed,
        "expert_return": agent.expert.return_mean,
        "eval_episodes": agent.config.eval_episodes,
        "checkpoints": [{"env_step": c.env_step, "return_mean": c.return_mean} for c in checkpoints],
    }


def _description(env_id: str, quality: str, steps: int, agent: behaviour_agent.BehaviourAgent | None) -> str:
    source = "a uniform random policy" if quality == "random" else f"a TD3 agent trained for {agent.budget} steps"
    return f"{steps} transitions of {env_id} from {source} (D4RL '{quality}'), built by rlservice."

