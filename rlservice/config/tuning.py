"""A tuning job: dataset, preset, fixed knobs, search space, budget, scheduler, resources, MLflow names.

YAML (plus `--set path=value` overrides) in, a validated `TuningJob` out. Everything is checked
here, before Ray starts; every problem is one `ConfigError` line naming the field and the value.

Search-space knobs are AgentConfig fields, the alias `dmg_nu` (SPEC.md maps DMG's nu onto
`bc_weight`) and the switches `use_pa`, `use_pani`, `use_dmg` (false turns the method off).
A knob is sampled only where it has an effect:
- its explicit `condition: {knob: value or [values]}` holds for the knobs sampled before it;
- a switch's knob (e.g. `pa_alpha` under `use_pa`) only when the switch is on;
- a knob that refines another (e.g. `noise_penalty` of `noise_sigma`) only when that one is on.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlservice.config.presets import PARS_MUJOCO_STEPS, PARS_SHORT_BUDGET_EVIDENCE, default_eval_episodes, domain_of
from rlservice.config.run import (
    AgentConfig,
    RunConfig,
    StorageUri,
    build_run_config,
    first_error,
    load_yaml,
    parse_overrides,
    route_overrides,
)
from rlservice.errors import ConfigError

ALIASES = {"dmg_nu": "bc_weight"}
SWITCHES = {"use_pa": ("pa_alpha", 0.0), "use_pani": ("noise_sigma", 0.0), "use_dmg": ("dmg_lambda", 1.0)}


def _on(value: float) -> bool:
    return value > 0


# knob -> (knob it refines, test of that knob's effective value): without it the knob has no effect.
REFINES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "noise_penalty": ("noise_sigma", _on),
    "noise_kind": ("noise_sigma", _on),
    "noise_uniform_prob": ("noise_sigma", _on),
    "pa_distance": ("pa_alpha", _on),
    "awr_max_weight": ("awr_temperature", _on),
}
# Train fields the job sets through its own fields; `fixed:` may not set them.
JOB_TRAIN_FIELDS = {"steps": "steps", "eval_every": "eval_every", "eval_episodes": "eval_episodes",
                    "num_seeds": "seeds_per_trial", "seed": "seed", "checkpoint_dir": None}


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchDim(_Spec):
    """One knob's distribution. `loguniform`/`uniform`/`int` take low and high; `choice` takes values."""

    type: Literal["loguniform", "uniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[bool | int | float | str] | None = None
    condition: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> "SearchDim":
        if self.type == "choice":
            if not self.values:
                raise ValueError(f"type=choice needs a non-empty `values` list (got {self.values!r})")
            if self.low is not None or self.high is not None:
                raise ValueError("type=choice takes `values`, not low/high")
            return self
        if self.low is None or self.high is None or self.values is not None:
            raise ValueError(f"type={self.type} needs `low` and `high` (and no `values`)")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise ValueError(f"low={self.low!r} must not exceed high={self.high!r}")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"low={self.low!r}: a log-uniform range must be positive")
        if self.type == "int" and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError(f"low={self.low!r}, high={self.high!r}: type=int needs whole numbers")
        return self

    def allowed(self, knob: str) -> list[Any]:
        """The values `condition[knob]` accepts."""
        wanted = (self.condition or {})[knob]
        return wanted if isinstance(wanted, list) else [wanted]

    def extremes(self) -> list[Any]:
        """The values that validate the whole range (its ends, or every choice)."""
        if self.type == "choice":
            return list(self.values)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


class DatasetSpec(_Spec):
    id: str
    download: bool = True
    uri: StorageUri | None = Field(None, description="a Minari dataset directory on shared storage (s3://, file://); "
                                                     "the driver reads it once and hands it to every trial")
    build_steps: int | None = Field(None, ge=1, description="if missing where the job runs, build it with this many steps")


class SchedulerSpec(_Spec):
    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1, description="gradient steps every trial runs before ASHA may stop it")
    reduction_factor: float = Field(3.0, gt=1)


class SamplerSpec(_Spec):
    startup_trials: int = Field(10, ge=0, description="random proposals before TPE models the observations")


class ResourcesSpec(_Spec):
    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)
    evaluators: int = Field(1, ge=0, description="Ray actors evaluating while the trial trains; 0 evaluates in-process")
    evaluator_cpus: float = Field(1.0, gt=0)


class OfflineEvaluationSpec(_Spec):
    """Fitted Q Evaluation of trials' policies (`rlservice.training.fqe`): no environment needed."""

    steps: int = Field(ge=1, description="FQE gradient steps per evaluated policy")
    every: bool = Field(False, description="FQE at every evaluation (ASHA needs intermediate scores), "
                        "not only of the final policy")


# Environment seeds: evaluations during training (selection) use `seed + i` for their episodes,
# confirmations use CONFIRMATION_SEED_BASE + i. A job's selection seeds must stay below the base,
# so that no confirmation episode repeats an episode the search saw.
CONFIRMATION_SEED_BASE = 1_000_000_000
CONFIRM_EPISODES = {"antmaze": 100}  # default 50 elsewhere (MuJoCo)


class ConfirmSpec(_Spec):
    """After the search: the `top_k` trials with the best selection scores are evaluated again on
    `episodes` fresh episodes per seed, at each checkpoint of `checkpoints`; 0 turns it off."""

    top_k: int = Field(3, ge=0)
    episodes: int | None = Field(None, ge=1, description="default 50, 100 on AntMaze")
    checkpoints: list[Literal["best", "final"]] = Field(["best", "final"], min_length=1)

    def episodes_for(self, dataset_id: str) -> int:
        return self.episodes or CONFIRM_EPISODES.get(domain_of(dataset_id), 50)


def confirmation_seeds(episodes: int) -> range:
    return range(CONFIRMATION_SEED_BASE, CONFIRMATION_SEED_BASE + episodes)


class MlflowSpec(_Spec):
    experiment: str = Field(min_length=1)
    registered_model: str = Field(min_length=1)


JOB_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # also a directory name under $RLSERVICE_HOME/tune


def check_job_name(name: str, source: str = "--name") -> str:
    """A job name given outside the YAML (`--name`) obeys the YAML `name` pattern."""
    if not re.match(JOB_NAME_PATTERN, name):
        raise ConfigError(f"{source} {name!r}: a job name is letters, digits, '_', '.' and '-', "
                          "starting with a letter or digit")
    return name


class TuningJob(_Spec):
    name: str = Field(min_length=1, pattern=JOB_NAME_PATTERN)
    description: str = ""
    dataset: DatasetSpec
    preset: str | None = None
    fixed: dict[str, Any] = {}
    search_space: dict[str, SearchDim]
    trials: int = Field(ge=1)
    steps: int = Field(ge=1, description="gradient steps per trial")
    eval_every: int = Field(ge=1)
    eval_episodes: int | None = Field(None, ge=1, description="default 100 on AntMaze, 10 elsewhere")
    seeds_per_trial: int = Field(1, ge=1)
    seed: int = Field(0, ge=0)
    scheduler: SchedulerSpec = SchedulerSpec()
    sampler: SamplerSpec = SamplerSpec()
    resources: ResourcesSpec = ResourcesSpec()
    max_concurrent: int = Field(1, ge=1)
    max_failures: int = Field(2, ge=0, description="retries of a failed trial, each from its last checkpoint")
    confirm: ConfirmSpec = ConfirmSpec()
    mlflow: MlflowSpec
    # online: rollouts score the trials; offline: FQE does, and the job needs no environment.
    selection: Literal["online", "offline"] = "online"
    offline_evaluation: OfflineEvaluationSpec | None = None

    @property
    def offline(self) -> bool:
        return self.selection == "offline"

    def selection_seeds(self) -> range:
        """The environment seeds of every evaluation during training (each seed's policy, each step)."""
        return range(self.seed, self.seed + (self.eval_episodes or default_eval_episodes(self.dataset.id)))

    # ------------------------------------------------------------------ configs of trials
    def knob_overrides(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """Sampled knobs -> AgentConfig fields (aliases resolved; a switch that is off wins)."""
        out = {ALIASES.get(k, k): v for k, v in sampled.items() if k not in SWITCHES}
        for switch, (field, off) in SWITCHES.items():
            if switch in sampled and not sampled[switch]:
                out[field] = off
        return out

    def run_config(self, sampled: dict[str, Any] | None = None, action_dim: int | None = None) -> RunConfig:
        """The RunConfig of a trial: preset < fixed < sampled knobs, with the job's budget."""
        budget = {"train.steps": self.steps, "train.eval_every": self.eval_every,
                  "train.eval_episodes": self.eval_episodes, "train.num_seeds": self.seeds_per_trial,
                  "train.seed": self.seed}
        if self.eval_episodes is None:  # the dataset's domain decides (RunConfig)
            del budget["train.eval_episodes"]
        if self.resources.gpus > 0:
            budget["train.device"] = "cuda"
        if self.offline and not self.offline_evaluation.every:
            budget["train.eval_every"] = self.steps  # FQE of the final policy only
        overrides = {**budget, **self.fixed, **self.knob_overrides(sampled or {})}
        dataset = self.dataset.model_dump(include={"id", "download", "uri"}, exclude_none=True)
        return build_run_config(self.dataset.id, self.preset, {"dataset": dataset}, overrides, action_dim=action_dim)

    def searched_fields(self) -> set[str]:
        """The AgentConfig fields the search space sets (aliases and switches resolved)."""
        space = self.search_space
        return {ALIASES.get(k, k) for k in space} | {SWITCHES[k][0] for k in space if k in SWITCHES}

    def applies(self, knob: str, sampled: dict[str, Any], base_agent: dict[str, Any]) -> bool:
        """Whether `knob` has an effect given the knobs sampled so far (define-by-run order)."""
        dim = self.search_space[knob]
        for other in dim.condition or {}:
            if other not in sampled or sampled[other] not in dim.allowed(other):
                return False
        field = ALIASES.get(knob, knob)
        for switch, (target, _) in SWITCHES.items():
            if target == field and switch in self.search_space and not sampled.get(switch, False):
                return False
        if field in REFINES:
            parent, test = REFINES[field]
            effective = {**base_agent, **self.knob_overrides(sampled)}
            return bool(test(effective[parent]))
        return True

    def search_order(self) -> list[str]:
        """Knobs ordered so that every knob comes after the knobs that gate it."""
        order: list[str] = []
        visiting: set[str] = set()

        def visit(knob: str) -> None:
            if knob in order:
                return
            if knob in visiting:
                raise ConfigError(f"search_space.{knob}.condition: conditions form a cycle through {knob!r}")
            visiting.add(knob)
            for parent in self._gates(knob):
                visit(parent)
            visiting.discard(knob)
            order.append(knob)

        for knob in self.search_space:
            visit(knob)
        return order

    def _gates(self, knob: str) -> list[str]:
        field = ALIASES.get(knob, knob)
        gates = list(self.search_space[knob].condition or {})
        gates += [s for s, (target, _) in SWITCHES.items() if target == field and s in self.search_space]
        if field in REFINES:
            parent = REFINES[field][0]
            gates += [k for k in self.search_space if ALIASES.get(k, k) == parent or SWITCHES.get(k, ("",))[0] == parent]
        return [g for g in gates if g != knob]


# ---------------------------------------------------------------------- loading and checks
def load_job(path: str | Path, overrides: list[str] | None = None) -> TuningJob:
    """Read, override (`--set a.b=value`) and validate a job file."""
    spec = load_yaml(path)
    for key, value in parse_overrides(overrides or []).items():
        _set_path(spec, key, value)
    return validate_job(spec)


def validate_job(spec: dict[str, Any]) -> TuningJob:
    try:
        job = TuningJob.model_validate(spec)
    except ValidationError as exc:
        raise ConfigError(first_error(exc)) from None
    _check_selection(job)
    _check_space(job)
    _check_fixed(job)
    _check_values(job)
    if job.scheduler.type == "asha" and job.scheduler.grace_period > job.steps:
        raise ConfigError(f"scheduler.grace_period={job.scheduler.grace_period}: exceeds steps={job.steps}, "
                          "so ASHA could never stop a trial")
    if job.dataset.build_steps is not None and job.dataset.uri is not None:
        raise ConfigError(f"dataset.build_steps={job.dataset.build_steps}: the dataset comes from {job.dataset.uri}; "
                          "only a dataset of the driver's Minari root can be built")
    if job.dataset.build_steps is not None and not _buildable(job.dataset.id):
        raise ConfigError(f"dataset.build_steps={job.dataset.build_steps}: only rlservice/<env>/random-v0 datasets "
                          f"can be built where the job runs, not {job.dataset.id!r}")
    if job.selection_seeds().stop > CONFIRMATION_SEED_BASE:
        raise ConfigError(f"seed={job.seed}: with eval_episodes={job.eval_episodes} its evaluation seeds reach "
                          f"the confirmation seeds (from {CONFIRMATION_SEED_BASE}); choose a smaller seed")
    if job.eval_every > job.steps:
        raise ConfigError(f"eval_every={job.eval_every}: exceeds steps={job.steps}; "
                          "a trial would be evaluated only at its end")
    return job


def budget_warnings(job: TuningJob) -> list[str]:
    """One line per budget that is too short for what the job tunes: PARS with no BC term on MuJoCo
    data is known to reach its published scores only at PARS_MUJOCO_STEPS (issue 23)."""
    agent, searched = job.run_config().agent, job.searched_fields()
    pars = agent.pa_alpha > 0 or "pa_alpha" in searched
    if domain_of(job.dataset.id) != "mujoco" or not pars or agent.bc_weight > 0 or "bc_weight" in searched:
        return []
    short = [f"steps={job.steps:,}"] if job.steps < PARS_MUJOCO_STEPS else []
    if job.scheduler.type == "asha" and job.scheduler.grace_period < PARS_MUJOCO_STEPS:
        short.append(f"scheduler.grace_period={job.scheduler.grace_period:,}")
    if not short:
        return []
    verb = "are" if len(short) > 1 else "is"
    return [f"warning: {' and '.join(short)} {verb} below the {PARS_MUJOCO_STEPS:,} steps of PARS's published MuJoCo "
            f"scores; {PARS_SHORT_BUDGET_EVIDENCE}, so short trials may rank PARS by its start, not its settings "
            "(`rlservice presets show --preset pars`)"]


def _check_selection(job: TuningJob) -> None:
    if not job.offline:
        return
    if "confirm" in job.model_fields_set and job.confirm.top_k > 0:
        raise ConfigError(f"confirm.top_k={job.confirm.top_k}: with selection=offline there is no environment to "
                          "confirm on; set confirm.top_k: 0")
    job.confirm = ConfirmSpec(top_k=0)  # confirmation runs episodes; an offline job runs none
    if job.offline_evaluation is None:
        raise ConfigError("selection=offline needs offline_evaluation: {steps: N} (FQE steps per policy)")
    if job.scheduler.type == "asha" and not job.offline_evaluation.every:
        raise ConfigError("selection=offline with scheduler asha: ASHA needs a score at every evaluation; "
                          "set offline_evaluation.every: true or scheduler.type: none")


def searchable_knobs() -> list[str]:
    return sorted({*AgentConfig.model_fields, *ALIASES, *SWITCHES} - {"algorithm"})


def _check_space(job: TuningJob) -> None:
    if not job.search_space:
        raise ConfigError("search_space is empty: name at least one knob to search "
                          "(e.g. pa_alpha: {type: loguniform, low: 1e-4, high: 1e-2})")
    known = set(searchable_knobs())
    for knob, dim in job.search_space.items():
        if knob not in known:
            raise ConfigError(f"search_space.{knob}: unknown knob; searchable knobs are {', '.join(sorted(known))}")
        if knob in SWITCHES and (dim.type != "choice" or any(not isinstance(v, bool) for v in dim.values)):
            raise ConfigError(f"search_space.{knob}.values={dim.values!r}: a switch takes true/false")
        for other, wanted in (dim.condition or {}).items():
            if other not in job.search_space:
                raise ConfigError(f"search_space.{knob}.condition: {other}={wanted!r} refers to a knob that is not searched")
    fields = [ALIASES.get(k, k) for k in job.search_space if k not in SWITCHES]
    if clash := sorted({f for f in fields if fields.count(f) > 1}):
        raise ConfigError(f"search_space: {clash[0]} is searched twice (directly and through an alias)")
    job.search_order()


def _check_fixed(job: TuningJob) -> None:
    routed = route_overrides(job.fixed)
    if routed["dataset"]:
        key = next(iter(routed["dataset"]))
        raise ConfigError(f"fixed.{key}: set the dataset with the job's `dataset` field")
    for field, value in routed["train"].items():
        if field in JOB_TRAIN_FIELDS:
            where = JOB_TRAIN_FIELDS[field]
            hint = f"set it with the job's `{where}` field" if where else "the trial chooses its own directory"
            raise ConfigError(f"fixed.{field}={value!r}: {hint}")
    if both := sorted(job.searched_fields() & set(routed["agent"])):
        value = routed["agent"][both[0]]
        raise ConfigError(f"fixed.{both[0]}={value!r}: the knob is also in search_space; fix it or search it")


def _check_values(job: TuningJob) -> None:
    """Build the base RunConfig and one per end of every range, so an out-of-range knob fails now."""
    job.run_config()
    for knob, dim in job.search_space.items():
        for value in dim.extremes():
            try:
                job.run_config({knob: value})
            except ConfigError as exc:
                raise ConfigError(f"search_space.{knob} allows {value!r}, which is invalid: {exc}") from None


def _buildable(dataset_id: str) -> bool:
    parts = dataset_id.split("/")
    return len(parts) == 3 and parts[0] == "rlservice" and parts[2] == "random-v0"


def _set_path(spec: dict[str, Any], dotted: str, value: Any) -> None:
    """`--set scheduler.grace_period=2` sets spec['scheduler']['grace_period']; under `fixed.` the
    rest is one knob (`fixed.train.log_every`), as `fixed:` takes dotted knob names."""
    head, _, rest = dotted.partition(".")
    *parents, last = [head, rest] if head == "fixed" and rest else dotted.split(".")
    node = spec
    for i, key in enumerate(parents):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}={value!r}: {'.'.join(parents[: i + 1])} is not a mapping")
        node = child
    node[last] = value
