"""Everything MLflow about runs: where they go, a tuning job's parent run, one nested run per
trial (or per `rlservice train`), the job's summary and the registration of its best policy.

Runs are written through an `MlflowClient` bound to an explicit URI, so Ray trial processes and
the driver log side by side without global state. A run's logging never raises and never stalls
training: values are buffered and sent again later when the server does not answer, and MLflow's
own HTTP retries are kept short (`store.CLIENT_ENV`) so that a failed call costs little.
"""

from __future__ import annotations

import csv
import json
import logging
import numbers
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from pydantic import ValidationError

from rlservice.config.presets import preset_values, resolve
from rlservice.config.run import AgentConfig, RunConfig
from rlservice.errors import ConfigError
from rlservice.tracking import registry
from rlservice.tracking.store import TrackingError, client, error_line, experiment_id
from rlservice.training.intervals import EPISODES, FQE_CRITICS, score_interval

log = logging.getLogger(__name__)

KIND_TAG = "rlservice.kind"  # job | trial | train
RUN_STATUS = {"completed": "FINISHED", "early-stopped": "FINISHED", "interrupted": "KILLED",
              "diverged": "FAILED", "failed": "FAILED"}
RANKED = ("completed", "early-stopped")  # statuses whose runs are ranked and may be registered
RUN_FILE = "mlflow-run.json"  # a run directory's MLflow run id, next to latest/ and best/
CHECKPOINT, FINAL_CHECKPOINT = "checkpoint", "final_checkpoint"  # a trial run's artifacts: best and last evaluation
RETRY_FIRST_S, RETRY_MAX_S = 2.0, 15.0
START_DEADLINE_S = 60.0
FINISH_DEADLINE_S = 120.0
_MAX_METRICS, _MAX_PARAMS, _MAX_PARAM_LENGTH = 1000, 100, 6000  # MLflow's log_batch limits


# ----------------------------------------------------------------- lineage and params


def git_commit() -> str | None:
    """Commit of the rlservice code, when it runs from a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_params(run_config: RunConfig, action_dim: int | None = None, *, digest: str) -> dict[str, Any]:
    """A run's params with stable names: agent.*, train.*, dataset.id, dataset.digest (`digest`,
    the loaded data's `OfflineData.digest`), preset, git.commit (and dataset.action_dim, which
    some presets depend on), and for a preset the paper's row (`preset.row`) and each preset
    value's source (`preset.source.<knob>`)."""
    params: dict[str, Any] = {
        "dataset.id": run_config.dataset.id,
        "dataset.digest": digest,
        "preset": run_config.preset or "none",
        "git.commit": git_commit() or "unknown",
        "agent": run_config.agent.model_dump(),
        "train": run_config.train.model_dump(),
    }
    if action_dim is not None:
        params["dataset.action_dim"] = action_dim
    if run_config.preset is not None:  # the paper's row and where each preset value came from
        resolved = resolve(run_config.preset, run_config.dataset.id, action_dim)
        params["preset.row"] = resolved.row or "none"
        params["preset.source"] = {name: knob.source for name, knob in resolved.knobs.items()}
    return params


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts -> dotted keys; values as MLflow stores them (strings)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def _log_params(c: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    entries = [Param(k, v[:_MAX_PARAM_LENGTH]) for k, v in flatten_params(params).items()]
    for i in range(0, len(entries), _MAX_PARAMS):
        c.log_batch(run_id, params=entries[i : i + _MAX_PARAMS])


# ----------------------------------------------------------------- runs


def start_job_run(uri: str, experiment: str, job_name: str, params: dict, tags: dict | None = None) -> str:
    """Create a tuning job's parent run (and its experiment if missing); returns the run id."""
    c = client(uri)
    try:
        run = c.create_run(experiment_id(c, uri, experiment), run_name=job_name, tags={KIND_TAG: "job", **(tags or {})})
        _log_params(c, run.info.run_id, {"git.commit": git_commit() or "unknown", **params})
    except MlflowException as exc:
        raise TrackingError(f"could not start the job's run in {uri}: {error_line(exc)}") from None
    return run.info.run_id


class TrialRun:
    """One trial (nested under the job's run) or one `rlservice train` run (no parent).

    Metrics and the checkpoint are sent when logged; when the server does not answer they stay
    buffered and go out with a later call (after a growing pause), or at `finish`, which keeps
    trying until its deadline and then gives up with a warning. Nothing here raises after the
    run exists.
    """

    def __init__(self, uri: str, experiment: str, parent_run_id: str | None, name: str, params: dict,
                 tags: dict | None = None):
        self.uri, self.name = uri, name
        self._client = client(uri)
        self._metrics: list[Metric] = []
        self._checkpoints: dict[str, Path] = {}  # artifact path -> directory, still to send
        self._final: tuple[str, Any, str] | None = None  # status tag, learning-curve figure, MLflow status
        self._retry_at = 0.0
        self._pause = RETRY_FIRST_S
        self._failing = False
        run_tags = {KIND_TAG: "trial" if parent_run_id else "train", **(tags or {})}
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            try:
                run = self._client.create_run(experiment_id(self._client, uri, experiment), run_name=name, tags=run_tags)
                break
            except MlflowException as exc:
                if time.monotonic() > deadline:
                    raise TrackingError(f"could not create run {name!r} in {uri}: {error_line(exc)}") from None
                time.sleep(RETRY_FIRST_S)
        self.run_id: str = run.info.run_id
        self._params = {"git.commit": git_commit() or "unknown", **params}
        self._params_pending = True
        self._try_send()

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Numbers only (bools, strings and the "step" key are left out); buffered, never raises."""
        now = int(time.time() * 1000)
        self._metrics += [
            Metric(key, float(value), now, step)
            for key, value in metrics.items()
            if key != "step" and isinstance(value, numbers.Real) and not isinstance(value, bool)
        ]
        self._try_send()

    def log_checkpoint(self, checkpoint_dir: str | Path, artifact: str = CHECKPOINT) -> None:
        """Upload `checkpoint_dir` as the run's artifact `artifact`, over the previous one."""
        self._checkpoints[artifact] = Path(checkpoint_dir)
        self._try_send()

    def finish(self, status: str, history: list[dict[str, Any]], *, score: float | None = None,
               score_std: float | None = None, deadline_s: float = FINISH_DEADLINE_S) -> bool:
        """Record `status` (tag), `score`/`score_std` (default: the best evaluation of `history`,
        the one the checkpoint holds), the learning curve, everything still buffered, and end
        the run. Returns whether all of it reached the store before `deadline_s`."""
        if status not in RUN_STATUS:
            raise ValueError(f"status {status!r} is not one of {', '.join(RUN_STATUS)}")
        best = max(history, key=lambda h: h["normalized_score"], default=None)
        if score is None and best is not None:
            score, score_std = best["normalized_score"], best.get("normalized_score_std", 0.0)
        if score is not None:
            step = best["step"] if best is not None else 0
            self.log_metrics(step, {"score": score, "score_std": score_std or 0.0})
            if best is not None and best.get("episode_scores") and score == best["normalized_score"]:
                interval = score_interval(best["episode_scores"], unit=best.get("score_unit", EPISODES))
                self.log_metrics(step, interval_metrics("score", interval.to_json()))
        from rlservice.tracking import (
            figures,  # matplotlib: imported only when a figure is drawn
        )

        self._final = (status, figures.learning_curve(history, title=f"{self.name} ({status})"), RUN_STATUS[status])
        deadline = time.monotonic() + deadline_s
        while not self._try_send(force=True):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning(
                    "tracking server %s did not answer for %.0fs: gave up on run %s (%d metric values%s not logged); "
                    "checkpoints stay on disk%s",
                    self.uri, deadline_s, self.run_id, len(self._metrics),
                    " and the checkpoints" if self._checkpoints else "",
                    "".join(f" in {p.parent}" for p in list(self._checkpoints.values())[:1]),
                )
                return False
            time.sleep(min(max(self._retry_at - time.monotonic(), 0.1), remaining))
        return True

    def _try_send(self, force: bool = False) -> bool:
        if not force and time.monotonic() < self._retry_at:
            return False
        try:
            self._send()
        except Exception as exc:  # any failure of the store: keep everything and try again later
            self._retry_at = time.monotonic() + self._pause
            self._pause = min(2 * self._pause, RETRY_MAX_S)
            if not self._failing:
                log.warning("tracking server %s not answering (%s); run %s keeps training and buffers its metrics",
                            self.uri, error_line(exc), self.run_id)
            self._failing = True
            return False
        if self._failing:
            log.warning("tracking server %s answers again; run %s sent what it had buffered", self.uri, self.run_id)
        self._failing, self._pause = False, RETRY_FIRST_S
        return True

    def _send(self) -> None:
        """Everything pending, oldest first; what went out is dropped from the buffers as it goes."""
        if self._params_pending:
            _log_params(self._client, self.run_id, self._params)
            self._params_pending = False
        while self._metrics:
            chunk = self._metrics[:_MAX_METRICS]
            self._client.log_batch(self.run_id, metrics=chunk)
            del self._metrics[: len(chunk)]
        for artifact, directory in list(self._checkpoints.items()):
            self._client.log_artifacts(self.run_id, str(directory), artifact)
            del self._checkpoints[artifact]
        if self._final is not None:
            status, figure, run_status = self._final
            self._client.set_tag(self.run_id, "status", status)
            self._client.log_figure(self.run_id, figure, "learning_curve.png")
            self._client.set_terminated(self.run_id, run_status)
            self._final = None


def end_run(uri: str, run_id: str, status: str, score: float | None = None, score_std: float | None = None,
            tags: dict[str, str] | None = None, interval: dict | None = None) -> None:
    """End a run that its own process can no longer finish (no-op if it has ended)."""
    c = client(uri)
    if run_ended(c, run_id):
        return
    if score is not None:
        c.log_metric(run_id, "score", score)
        c.log_metric(run_id, "score_std", score_std or 0.0)
        for key, value in (interval_metrics("score", interval) if interval else {}).items():
            c.log_metric(run_id, key, value)
    for key, value in {**(tags or {}), "status": status}.items():
        c.set_tag(run_id, key, value)
    c.set_terminated(run_id, RUN_STATUS[status])


def supersede(uri: str, old_run_id: str, new_run_id: str) -> None:
    """Point a run that was cut short at the run that continues it, and end it `interrupted` if
    its process was killed before it could."""
    end_run(uri, old_run_id, "interrupted")
    client(uri).set_tag(old_run_id, "continued_in", new_run_id)


def run_ended(c: MlflowClient, run_id: str) -> bool:
    return c.get_run(run_id).info.status != "RUNNING"


def log_training_run(uri: str, experiment: str, trainer, *, name: str | None = None, tags: dict | None = None,
                     progress: bool = True):
    """Run `trainer` with one MLflow run of its own: params, metrics at every log and evaluation,
    the best checkpoint, status and learning curve. Returns (TrainResult, run id). The run's id is
    kept in the run directory: a resumed run is tagged `resumed_from` with the run it continues."""
    run_file = trainer.run_dir / RUN_FILE
    if run_file.is_file():
        tags = {**(tags or {}), "resumed_from": json.loads(run_file.read_text())["run_id"]}
    run = TrialRun(uri, experiment, None, name or trainer.run_dir.name,
                   run_params(trainer.config, action_dim=int(trainer.data.actions.shape[1]), digest=trainer.data.digest), tags)
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps({"run_id": run.run_id}))
    try:
        result = trainer.run(on_log=run.log_metrics, on_eval=run.log_metrics, progress=progress)
    except BaseException:
        run.finish("failed", trainer.history)
        raise
    best = trainer.run_dir / "best"
    run.log_checkpoint(best if best.exists() else trainer.run_dir / "latest")
    run.finish(result.status, result.history)
    return result, run.run_id


# ----------------------------------------------------------------- the job's end


def finish_job(uri: str, parent_run_id: str, trials: list[dict], *, model_name: str, dataset_id: str,
               preset: str | None, searched: list[str], confirmed: list[dict] | None = None,
               champion: dict | None = None, version_tags: dict[str, str] | None = None) -> dict:
    """Summarise a tuning job on its parent run, register its policy and end the run.

    `confirmed`: the candidates re-evaluated on fresh episodes (runtime.confirmation), each with
    its `confirmed` interval; the registered version is the one with the highest confirmed score,
    else (no confirmation) the trial with the best selection score. `champion`: the current
    champion confirmed under the same protocol, whose confirmed tags are written first.
    `version_tags` are added to the registered version's tags. The parent run gets trials.csv,
    summary.png, tuning_budget.csv/png and a description with the top configs."""
    c = client(uri)
    ranked = [t for t in trials if t.get("status") in RANKED and t.get("score") is not None]
    chosen = max(confirmed or [], key=lambda k: k["confirmed"]["mean"], default=None)
    by_trial = {t["trial"]: t for t in trials}
    best = by_trial[chosen["trial"]] if chosen else max(ranked, key=lambda t: t["score"], default=None)
    result = {"model": model_name, "version": None, "champion": False, "best_run_id": None, "best_score": None,
              "confirmed": chosen}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            c.log_artifact(parent_run_id, str(_write_trials_csv(trials, Path(tmp) / "trials.csv")))
            from rlservice.tracking import figures

            c.log_figure(parent_run_id, figures.job_summary(trials, searched), "summary.png")
            _log_budget(c, parent_run_id, trials, chosen, Path(tmp))
            _log_confirmed(c, confirmed or [])
            if champion is not None:
                registry.set_version_tags(uri, champion["model"], champion["version"], confirmed_tags(champion))
            if best is not None:
                lineage = c.get_run(best["run_id"]).data.params
                tags = {
                    "run_id": best["run_id"], "parent_run_id": parent_run_id, "trial": best["trial"],
                    "dataset": dataset_id, "preset": preset or "none",
                    "score": repr(float(best["score"])), "score_std": repr(float(best.get("score_std") or 0.0)),
                    "selection_score": repr(float(best["score"])), "trials": len(trials),
                    "dataset_digest": lineage.get("dataset.digest", "unknown"),
                    "git_commit": lineage.get("git.commit", "unknown"),
                    **(version_tags or {}),
                    **(confirmed_tags(chosen) if chosen else {}),
                }
                kind = chosen["checkpoint_kind"] if chosen else "best"
                checkpoint = local_checkpoint(uri, best["run_id"], chosen["checkpoint"] if chosen else best["checkpoint"],
                                              Path(tmp), FINAL_CHECKPOINT if kind == "final" else CHECKPOINT)
                version = registry.register_policy(uri, best["run_id"], checkpoint, model_name, tags).version
                champion_moved = registry.promote_if_better(
                    uri, model_name, version, chosen["confirmed"]["mean"] if chosen else None, dataset_id)
                c.log_metric(parent_run_id, "best_selection_score", float(best["score"]))
                if chosen:
                    for key in ("mean", "low", "high"):
                        c.log_metric(parent_run_id, f"confirmed_score{'' if key == 'mean' else '_ci_' + key}",
                                     chosen["confirmed"][key])
                c.set_tag(parent_run_id, "best_run_id", best["run_id"])
                c.set_tag(parent_run_id, "registered_model", f"{model_name}/{version}")
                result.update(version=version, champion=champion_moved, best_run_id=best["run_id"],
                              best_score=float(best["score"]))
            c.set_tag(parent_run_id, "mlflow.note.content", job_description(trials, confirmed or [], result))
        c.set_terminated(parent_run_id, "FINISHED" if best is not None else "FAILED")
    except MlflowException as exc:
        raise TrackingError(f"could not finish job run {parent_run_id} in {uri}: {error_line(exc)}") from None
    return result


COUNT_METRIC = {EPISODES: "episodes", FQE_CRITICS: "fqe_critics"}  # NAME_<this>: what a score's interval rests on


def interval_metrics(name: str, interval: dict) -> dict[str, float]:
    """A score's interval as run metrics: NAME_ci_low, NAME_ci_high, NAME_seeds and NAME_episodes
    (NAME_fqe_critics where FQE estimated the scores: its columns are critics, not episodes)."""
    return {f"{name}_ci_low": interval["low"], f"{name}_ci_high": interval["high"], f"{name}_seeds": interval["seeds"],
            f"{name}_{COUNT_METRIC[interval.get('unit', EPISODES)]}": interval["episodes"]}


def _log_confirmed(c: MlflowClient, confirmed: list[dict]) -> None:
    """On each confirmed trial's run: its best confirmed checkpoint's score and interval."""
    best_of = {k["run_id"]: k for k in sorted(confirmed, key=lambda k: k["confirmed"]["mean"])}  # the best last
    for run_id, k in best_of.items():
        metrics = {"confirmed_score": k["confirmed"]["mean"], **interval_metrics("confirmed_score", k["confirmed"])}
        now = int(time.time() * 1000)
        c.log_batch(run_id, metrics=[Metric(key, float(v), now, 0) for key, v in metrics.items()])
        c.set_tag(run_id, "confirmed_checkpoint", k["checkpoint_kind"])


def confirmed_tags(candidate: dict) -> dict[str, str]:
    """A registered version's evidence: its confirmed score, interval, episodes and checkpoint."""
    interval, seeds = candidate["confirmed"], candidate["confirmed_seeds"]
    return {
        "confirmed_score": repr(interval["mean"]), "confirmed_ci_low": repr(interval["low"]),
        "confirmed_ci_high": repr(interval["high"]), "confirmed_episodes": str(interval["episodes"]),
        "confirmed_seeds": str(interval["seeds"]), "confirmed_env_seeds": f"{seeds[0]}-{seeds[-1]}",
        "confirmed_checkpoint": candidate["checkpoint_kind"],
    }


def _log_budget(c: MlflowClient, parent_run_id: str, trials: list[dict], chosen: dict | None, tmp: Path) -> None:
    """tuning_budget.csv and .png: the expected best final score of n of this job's trials."""
    from rlservice.tracking import figures
    from rlservice.training.tuning_budget import budget_curve

    finals = [t["final_score"] for t in trials if t.get("status") in RANKED and t.get("final_score") is not None]
    if not finals:
        return
    curve = budget_curve(finals)
    path = tmp / "tuning_budget.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trials", "expected_max_final_score", "ci_low", "ci_high", "registered_confirmed_score"])
        confirmed = chosen["confirmed"]["mean"] if chosen else None
        for row in zip(curve["trials"], curve["expected_max"], curve["low"], curve["high"]):
            writer.writerow([*row, confirmed])
    c.log_artifact(parent_run_id, str(path))
    c.log_figure(parent_run_id, figures.tuning_budget(curve, chosen["confirmed"] if chosen else None),
                 "tuning_budget.png")


def job_description(trials: list[dict], confirmed: list[dict], result: dict, top: int = 5) -> str:
    """Markdown for the parent run's description: confirmed candidates, then the top trials by
    selection score, each score with its 95% interval and what it rests on."""
    from rlservice.training.intervals import Interval

    lines = []
    if confirmed:
        lines += ["**Confirmed on fresh episodes** (registered: the highest confirmed score)", "",
                  "| trial | checkpoint | confirmed score [95% CI] | selection score |", "|---|---|---|---|"]
        for k in sorted(confirmed, key=lambda k: -k["confirmed"]["mean"]):
            lines.append(f"| {k.get('name') or k['trial']} | {k['checkpoint_kind']} | {Interval(**k['confirmed']).text()} "
                         f"| {k['selection_score']:.2f} |")
        lines.append("")
    ranked = sorted((t for t in trials if t.get("status") in RANKED and t.get("score") is not None),
                    key=lambda t: -t["score"])[:top]
    lines += ["**Top trials by selection score** (best evaluation during training: optimistic)", "",
              "| trial | selection score [95% CI] | final score | knobs |", "|---|---|---|---|"]
    for t in ranked:
        interval = Interval(**t["score_interval"]).text() if t.get("score_interval") else f"{t['score']:.2f}"
        knobs = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(t["config"].items()))
        final = f"{t['final_score']:.2f}" if t.get("final_score") is not None else "-"
        lines.append(f"| {t.get('name') or t['trial']} | {interval} | {final} | {knobs} |")
    if result.get("version"):
        lines += ["", f"Registered: {result['model']} version {result['version']}"
                  + (" (champion)" if result["champion"] else " (champion unchanged)")]
    return "\n".join(lines)


def _write_trials_csv(trials: list[dict], path: Path) -> Path:
    knobs = sorted({k for t in trials for k in t.get("config", {})})
    columns = ["trial", "run_id", "status", "score", "score_std", "checkpoint", *knobs]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for t in trials:
            writer.writerow({**{c: t.get(c) for c in columns[:6]}, **t.get("config", {})})
    return path


def log_table(uri: str, run_id: str, name: str, columns: list[str], rows: list[tuple]) -> None:
    """A CSV artifact `name` of `rows` under `columns` on run `run_id`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)
        try:
            client(uri).log_artifact(run_id, str(path))
        except MlflowException as exc:
            raise TrackingError(f"could not log {name} to run {run_id} in {uri}: {error_line(exc)}") from None


def local_checkpoint(uri: str, run_id: str, local: str | Path | None, tmp: Path, artifact: str = CHECKPOINT) -> Path:
    """A trial's checkpoint on this machine (`local`, where Tune keeps it), else the copy logged
    to its run as `artifact`."""
    if local and (Path(local) / "state.pt").is_file():
        return Path(local)
    try:
        return Path(client(uri).download_artifacts(run_id, artifact, str(tmp / run_id)))
    except MlflowException as exc:
        raise TrackingError(f"run {run_id} has no {artifact} here or in the store: {error_line(exc)}") from None


# ----------------------------------------------------------------- browsing


def best_runs(uri: str, experiment: str, dataset: str | None = None, top: int = 10) -> list[dict[str, Any]]:
    """The `top` trial/train runs of `experiment` by score (completed or early-stopped only),
    each with the knobs that differ from its preset."""
    c = client(uri)
    found = c.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"experiment {experiment!r} not found in {uri}")
    query = f"tags.`{KIND_TAG}` != 'job'" + (f" and params.`dataset.id` = '{dataset}'" if dataset else "")
    rows: list[dict[str, Any]] = []
    token = None
    while len(rows) < top:
        try:
            page = c.search_runs([found.experiment_id], query, order_by=["metrics.score DESC"], max_results=1000,
                                 page_token=token)
        except MlflowException as exc:
            raise TrackingError(f"could not search experiment {experiment!r} in {uri}: {error_line(exc)}") from None
        for run in page:
            metrics, params, run_tags = run.data.metrics, run.data.params, run.data.tags
            if "score" not in metrics or run_tags.get("status") not in RANKED:
                continue
            rows.append({
                "run_id": run.info.run_id,
                "name": run.info.run_name,
                "status": run_tags["status"],
                "score": metrics["score"],
                "score_std": metrics.get("score_std", 0.0),
                "score_interval": _interval(metrics, "score"),
                "confirmed": _interval(metrics, "confirmed_score"),
                "confirmed_checkpoint": run_tags.get("confirmed_checkpoint"),
                "dataset": params.get("dataset.id"),
                "preset": params.get("preset"),
                "knobs": changed_knobs(params),
                "parent_run_id": run_tags.get("mlflow.parentRunId"),
            })
        token = page.token
        if not token:
            break
    return rows[:top]


def _interval(metrics: dict[str, float], name: str) -> dict[str, Any] | None:
    """A score and its interval read back from a run's metrics (None where it was not logged)."""
    if name not in metrics or f"{name}_ci_low" not in metrics:
        return None
    unit, count = next((u, c) for u, c in COUNT_METRIC.items() if f"{name}_{c}" in metrics)
    return {"mean": metrics[name], "low": metrics[f"{name}_ci_low"], "high": metrics[f"{name}_ci_high"],
            "seeds": int(metrics[f"{name}_seeds"]), "episodes": int(metrics[f"{name}_{count}"]), "unit": unit}


def changed_knobs(params: dict[str, str]) -> dict[str, Any]:
    """Agent knobs of a run (its agent.* params) whose values differ from its preset's."""
    logged = {k.removeprefix("agent."): v for k, v in params.items() if k.startswith("agent.")}
    preset = params.get("preset", "none")
    try:
        expected = AgentConfig() if preset == "none" else AgentConfig.model_validate(
            preset_values(preset, params.get("dataset.id", ""),
                          int(params["dataset.action_dim"]) if "dataset.action_dim" in params else None)
        )
        typed = AgentConfig.model_validate({k: None if v == "None" else v for k, v in logged.items()})
    except (ConfigError, ValidationError, ValueError):  # written by another version: compare as text
        defaults = AgentConfig()
        return {k: v for k, v in logged.items() if v != str(getattr(defaults, k, None))}
    return {k: getattr(typed, k) for k in logged if getattr(typed, k) != getattr(expected, k)}
