"""Typed specs: YAML and `--set key=value` in, validated pydantic objects out.

Resolution order for agent knobs: field defaults < preset < YAML `agent:` < `--set`.
Every error is a `ConfigError` whose one-line message names the field and the value.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from rlservice.config.presets import default_eval_episodes, preset_values
from rlservice.errors import ConfigError


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AgentConfig(_Spec):
    """Every knob of SPEC.md. The defaults are SPEC.md's; presets are combinations of them."""

    algorithm: Literal["td3", "iql"] = "td3"
    # networks
    num_critics: int = Field(2, ge=1)
    critic_hidden: int = Field(256, ge=1)
    critic_layers: int = Field(2, ge=1)
    critic_layernorm: bool = True
    actor_hidden: int = Field(256, ge=1)
    actor_layers: int = Field(2, ge=1)
    actor_layernorm: bool = False
    # optimisation
    actor_lr: float = Field(3e-4, gt=0)
    critic_lr: float = Field(3e-4, gt=0)
    value_lr: float = Field(3e-4, gt=0)
    actor_lr_schedule: Literal["constant", "cosine"] = "constant"
    discount: float = Field(0.99, gt=0, lt=1)
    tau: float = Field(0.005, gt=0, le=1)
    policy_freq: int = Field(2, ge=1)
    # critic target
    policy_noise: float = Field(0.2, ge=0)
    noise_clip: float = Field(0.5, ge=0)
    target_subset: int = Field(2, ge=1)
    # PARS: reward scaling (with LayerNorm critics) and penalty on infeasible actions
    reward_scale: float = Field(1.0, gt=0)
    pa_alpha: float = Field(0.0, ge=0)
    pa_distance: float = Field(100.0, gt=0)
    # States of the batch that also get an infeasible action (the first pa_samples rows, a random
    # subset since rows are drawn at random): the default, every state, adds ~2/3 to a 10-critic
    # step's FLOPs; fewer states estimate the same mean for less.
    pa_samples: int | None = Field(None, ge=1)
    reward_min: float | None = None
    # Q_min of the PA term as the paper used it (PARS Table 8); None: c * r_min / (1 - gamma).
    q_min: float | None = None
    # PANI: penalised action noise injection
    noise_sigma: float = Field(0.0, ge=0)
    noise_kind: Literal["gaussian", "laplace", "hybrid"] = "hybrid"
    noise_penalty: float = Field(1.0, ge=0)
    noise_uniform_prob: float = Field(0.1, ge=0, le=1)
    # DMG / IQL
    dmg_lambda: float = Field(1.0, ge=0, le=1)
    expectile: float = Field(0.7, gt=0, lt=1)
    awr_temperature: float = Field(0.0, ge=0)
    awr_max_weight: float = Field(100.0, gt=0)
    # actor
    bc_weight: float = Field(0.4, ge=0)
    # first: Q_1 (TD3+BC, PANI); min: over the ensemble (PARS, DMG); subset_mean: of a random subset (fine-tuning)
    actor_q: Literal["first", "min", "subset_mean"] = "min"
    actor_q_subset: int = Field(2, ge=1)
    # data conventions (D4RL)
    normalize_observations: bool = True
    reward_shift: float = 0.0
    # IQL's MuJoCo convention: rewards x 1000 / (max - min episode return of the dataset)
    reward_normalization: Literal["none", "return_range"] = "none"
    # diagnostics
    divergence_factor: float = Field(10.0, gt=1)

    @model_validator(mode="after")
    def _subsets_fit_ensemble(self) -> "AgentConfig":
        for field in ("target_subset", "actor_q_subset"):
            if getattr(self, field) > self.num_critics:
                raise ValueError(
                    f"{field}={getattr(self, field)} exceeds num_critics={self.num_critics}"
                )
        for name, value in self:
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name}={value} is not finite")
        return self

    def critic_rows(self, batch_size: int) -> int:
        """Rows the critics train on per step: the batch, plus the PA term's infeasible actions."""
        return batch_size + (min(self.pa_samples or batch_size, batch_size) if self.pa_alpha > 0 else 0)

    @property
    def has_value_net(self) -> bool:
        """V exists for DMG's mixed target, for IQL, and for advantage weights."""
        return self.dmg_lambda < 1 or self.algorithm == "iql" or self.awr_temperature > 0


class TrainConfig(_Spec):
    steps: int = Field(1_000_000, ge=1)
    batch_size: int = Field(256, ge=1)
    eval_every: int = Field(5000, ge=1)
    eval_episodes: int | None = Field(None, ge=1, description="default: 100 on AntMaze, 10 elsewhere")
    log_every: int = Field(1000, ge=1)
    seed: int = Field(0, ge=0)
    num_seeds: int = Field(1, ge=1, description="independent seeds trained together in one vectorised learner")
    seed_group: int | None = Field(
        None, ge=1, description="seeds whose forward and backward run together; default: all on a GPU, "
        "as many as stay in cache on a CPU")
    compile: bool = Field(False, description="torch.compile the networks (slow first steps; faster for large ensembles)")
    # ATen by default: oneDNN's matmuls are faster here but its learner steps were 0.39-0.55x
    # ATen's (README, Matmul kernels); and "auto" may choose differently in a resumed process,
    # which would break a bit-exact --resume.
    matmul: Literal["auto", "aten", "onednn"] = Field(
        "aten", description="kernel of the networks' matmuls on a CPU: aten, onednn, or auto = the faster of "
        "the two, measured once per process")
    device: str = "cpu"
    checkpoint_dir: str | None = None


def _storage_uri(uri: str) -> str:
    """A URI of shared storage (`s3://bucket/path`, `gs://...`, `file:///path`): no credentials
    in it, since job files travel and are logged; they come from the environment."""
    parts = urlsplit(uri)
    if not parts.scheme or "://" not in uri:
        raise ValueError("expected a URI such as s3://bucket/datasets/hopper-medium-v0 or file:///path")
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise ValueError("credentials and options do not belong in the URI; set them in the environment "
                         "(e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)")
    return uri


StorageUri = Annotated[str, AfterValidator(_storage_uri)]


class DatasetConfig(_Spec):
    id: str
    download: bool = True
    uri: StorageUri | None = Field(None, description="a Minari dataset directory on shared storage, read instead of "
                                                     "the local copy (the id must match its metadata)")


class RunConfig(_Spec):
    """One training run: a dataset, a preset, the resolved agent knobs and the training budget."""

    dataset: DatasetConfig
    preset: str | None = None
    agent: AgentConfig = AgentConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _episodes_follow_domain(self) -> "RunConfig":
        if self.train.eval_episodes is None:
            episodes = default_eval_episodes(self.dataset.id)
            object.__setattr__(self, "train", self.train.model_copy(update={"eval_episodes": episodes}))
        return self


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings -> dict. Numbers are read as numbers (YAML 1.1 would keep `1e-3` a
    string); other values as YAML scalars (true, null, words)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r} is not of the form key=value")
        out[key.strip()] = _scalar(raw.strip())
    return out


def _scalar(raw: str) -> Any:
    for number in (int, float):
        try:
            return number(raw)
        except ValueError:
            pass
    try:
        return yaml.safe_load(raw) if raw else raw
    except yaml.YAMLError:
        return raw


def route_overrides(overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Send flat keys (`pa_alpha`) or dotted ones (`train.steps`) to their section."""
    sections: dict[str, dict[str, Any]] = {"agent": {}, "train": {}, "dataset": {}}
    models = {"agent": AgentConfig, "train": TrainConfig, "dataset": DatasetConfig}
    for key, value in overrides.items():
        section, dot, field = key.partition(".")
        if dot:
            if section not in models or field not in models[section].model_fields:
                raise ConfigError(f"unknown key {key!r} (value {value!r})")
        else:
            field = key
            section = next((s for s, m in models.items() if key in m.model_fields), "")
            if not section:
                raise ConfigError(f"unknown key {key!r} (value {value!r})")
        sections[section][field] = value
    return sections


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if isinstance(value, dict):  # a model-level check: its message names the fields itself
        return f"{where}: {message}" if where else message
    return f"{where}={value!r}: {message}"


def build_run_config(
    dataset_id: str | None = None,
    preset: str | None = None,
    yaml_spec: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    action_dim: int | None = None,
) -> RunConfig:
    """Resolve defaults < preset < YAML < overrides into a validated RunConfig.

    `action_dim` is needed only by presets whose values depend on it (PARS's beta * d outside
    MuJoCo); when it is unknown those knobs keep their field defaults.
    """
    spec = dict(yaml_spec or {})
    unknown = set(spec) - set(RunConfig.model_fields)
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"unknown key {key!r} (value {spec[key]!r})")
    routed = route_overrides(overrides or {})
    dataset = {**_mapping(spec.get("dataset"), "dataset"), **routed["dataset"]}
    if dataset_id is not None:
        dataset["id"] = dataset_id
    if "id" not in dataset:
        raise ConfigError("dataset.id is missing: pass --dataset ID or set dataset.id in the spec")
    preset = preset if preset is not None else spec.get("preset")
    agent: dict[str, Any] = {}
    if preset is not None:
        agent.update(preset_values(preset, dataset["id"], action_dim))
    chosen = {**_mapping(spec.get("agent"), "agent"), **routed["agent"]}
    agent.update(chosen)
    for subset in ("target_subset", "actor_q_subset"):
        # A paper's subset of "all 10 critics" on an ensemble the user made smaller: all of them.
        if subset in agent and subset not in chosen and isinstance(agent.get("num_critics"), int):
            agent[subset] = min(agent[subset], agent["num_critics"])
    train = {**_mapping(spec.get("train"), "train"), **routed["train"]}
    try:
        return RunConfig(dataset=dataset, preset=preset, agent=agent, train=train)
    except ValidationError as exc:
        raise ConfigError(first_error(exc)) from None


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name}={value!r} must be a mapping")
    return dict(value)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"spec file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"spec file {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"spec file {str(path)!r} must hold a mapping at the top level")
    return data
