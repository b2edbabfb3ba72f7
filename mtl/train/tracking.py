"""Experiment tracking: rank 0's scalars fanned out to TensorBoard and MLflow; the run report logged to MLflow.

`check_tracking(config)` refuses MLflow without its package or a tracking URI, naming the key, and writes the URI
(and an absolute path for a `file:` one) into `tracking.mlflow_uri`, so workers need not share the driver's
environment or working directory. `open_tracker` gives the recipe one `Tracker`: rank 0 the configured backends,
other ranks none. The MLflow run id is kept in `<run_dir>/mlflow_run.json`: a resumed run (or a replaced worker)
logs on into the same MLflow run. After training the driver logs the report and the export path into it and ends it
(`log_report`). MLflow is used through its own client (`MlflowClient`); `mlflow-skinny` is enough for a tracking
server or a `file:` store.
"""

from __future__ import annotations

import importlib.util
import json
import numbers
import os
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from mtl.config import Config, ConfigError
from mtl.train.run_record import flat

MLFLOW_RUN_FILE = "mlflow_run.json"
MAX_PARAM_CHARS = 500  # what every MLflow server version accepts (newer ones take more)
MAX_METRICS_PER_CALL = 1000  # MLflow's log_batch limits
MAX_PARAMS_PER_CALL = 100


def check_tracking(config: Config) -> Config:
    """The config with `tracking.mlflow_uri` resolved (the key, else MLFLOW_TRACKING_URI; a `file:` store's path
    made absolute); MLflow without its package or a URI is refused."""
    tracking = config.tracking
    if "mlflow" not in tracking.backends:
        return config
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            "tracking.backends lists mlflow, which is not installed: pip install '.[mlflow]' (or mlflow-skinny), "
            "or remove mlflow from tracking.backends"
        )
    uri = tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError(
            "tracking.backends lists mlflow but no tracking URI is set: set tracking.mlflow_uri (e.g. "
            "http://mlflow:5000 or file:/data/mlruns) or the MLFLOW_TRACKING_URI environment variable"
        )
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):  # a path: relative to this process's directory, not the workers'
        uri = Path(parsed.path).expanduser().resolve().as_uri()
    return config.model_copy(update={"tracking": tracking.model_copy(update={"mlflow_uri": uri})})


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    if uri.startswith("file:"):
        # MLflow 3 keeps its file store behind this opt-in; a file: URI in the config is that choice.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


def param_value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


class Backend(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    """Event files in `<run_dir>/tensorboard`."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class MLflow:
    """One MLflow run per run directory, its params the resolved config (dotted keys)."""

    def __init__(self, config: Config, run_dir: Path):
        self.uri = config.tracking.mlflow_uri
        assert self.uri, "check_tracking resolves tracking.mlflow_uri"
        self.client = mlflow_client(self.uri)
        self.run_id = self._start_or_continue(config, run_dir)
        self._log_params(flat(config.model_dump(mode="json")))

    def _start_or_continue(self, config: Config, run_dir: Path) -> str:
        record = run_dir / MLFLOW_RUN_FILE
        if record.is_file():
            saved = json.loads(record.read_text())
            if saved["tracking_uri"] == self.uri:
                self.client.update_run(saved["run_id"], status="RUNNING")
                print(f"MLflow: continuing run {saved['run_id']} at {self.uri} ({record})", flush=True)
                return saved["run_id"]
            print(f"MLflow: {record} names a run at {saved['tracking_uri']}, not at tracking.mlflow_uri={self.uri}; "
                  "starting a new MLflow run", flush=True)  # fmt: skip
        name = config.tracking.experiment or config.run.name
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=config.run.name, tags={"run_dir": str(run_dir)})
        run_id = run.info.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": self.uri}))
        print(f"MLflow: run {run_id} in experiment {name!r} at {self.uri}", flush=True)
        return run_id

    def _log_params(self, config: dict) -> None:
        """Params cannot change in MLflow: a resumed run logs the ones it lacks, and a changed value (e.g.
        train.max_steps, which a resume may raise) as the tag `resumed/<key>`."""
        from mlflow.entities import Param, RunTag

        logged = self.client.get_run(self.run_id).data.params
        values = {key: param_value(value) for key, value in config.items()}
        params = [Param(key, value) for key, value in values.items() if key not in logged]
        tags = [RunTag(f"resumed/{key}", value) for key, value in values.items() if logged.get(key, value) != value]
        for start in range(0, len(params), MAX_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=params[start : start + MAX_PARAMS_PER_CALL])
        for start in range(0, len(tags), MAX_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, tags=tags[start : start + MAX_PARAMS_PER_CALL])

    def log(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in scalars.items()]
        for start in range(0, len(metrics), MAX_METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + MAX_METRICS_PER_CALL])

    def close(self) -> None:
        """The run stays open: the driver logs the report into it and ends it (`log_report`)."""


class Tracker:
    """What the recipe logs through: every numeric scalar to every backend (none on ranks other than 0)."""

    def __init__(self, backends: list[Backend]):
        self.backends = backends

    def log(self, scalars: dict, step: int) -> None:
        """`scalars`: flat name -> value; values that are not numbers (flags, text) are left out."""
        numeric = {
            key: float(value)
            for key, value in scalars.items()
            if isinstance(value, numbers.Real) and not isinstance(value, bool)
        }
        for backend in self.backends:
            backend.log(numeric, step)

    def close(self) -> dict:
        """Closes every backend; returns what the run result carries (`mlflow_run_id`)."""
        for backend in self.backends:
            backend.close()
        mlflow = [backend for backend in self.backends if isinstance(backend, MLflow)]
        return {"mlflow_run_id": mlflow[0].run_id} if mlflow else {}


def open_tracker(config: Config, run_dir: Path, rank: int) -> Tracker:
    """Rank 0: the backends `tracking.backends` names; other ranks: none."""
    if rank != 0:
        return Tracker([])
    config = check_tracking(config)
    backends: list[Backend] = []
    if "tensorboard" in config.tracking.backends:
        backends.append(TensorBoard(run_dir))
    if "mlflow" in config.tracking.backends:
        backends.append(MLflow(config, run_dir))
    return Tracker(backends)


def log_report(config: Config, run_id: str, report_dir: Path, result: dict) -> None:
    """Driver side, after the report is written: its files (PNGs, report.json) as artifacts under `report/`, the
    export and best directories as tags; then the MLflow run ends."""
    uri = check_tracking(config).tracking.mlflow_uri
    client = mlflow_client(uri)
    client.log_artifacts(run_id, str(report_dir), "report")
    for key in ("export_dir", "best_dir"):
        if result.get(key):
            client.set_tag(run_id, key, str(result[key]))
    client.set_terminated(run_id)
    print(f"MLflow: run {run_id} at {uri}: report and export path logged, run ended", flush=True)
