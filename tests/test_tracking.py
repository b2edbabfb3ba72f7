"""Experiment tracking: a tiny in-process run logged to TensorBoard and to an MLflow file store (`file:` URI), read
back with MLflow's own client; a resumed run continues the same MLflow run; MLflow without a URI or package is
refused naming the key."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from mtl.config import ConfigError
from mtl.train.local_session import train_locally
from mtl.train.tracking import MLFLOW_RUN_FILE, check_tracking

pytestmark = pytest.mark.timeout(300)
TRAIN = {"max_steps": 10, "eval_every": 5, "log_every": 5, "checkpoint_every": 5}


@pytest.fixture
def mlflow_env(monkeypatch):
    """No tracking URI from the environment, and no file-store opt-in: the tracker's own (restored afterwards)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # records the original value, so undo restores it
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")


def tracked(make_config, store: Path, **train):
    return make_config(
        tracking={"backends": ["tensorboard", "mlflow"], "mlflow_uri": store.as_uri(), "experiment": "tiny"},
        train={**TRAIN, **train},
    )


def only_run(client):
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [run.info.run_id for run in runs]
    return runs[0]


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(metric.step for metric in client.get_metric_history(run_id, key))


def test_mlflow_file_store_holds_run_params_metrics_artifacts(make_config, tmp_path, mlflow_env, capsys):
    mlflow = pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    result = train_locally(tracked(make_config, store))
    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    run = only_run(client)
    run_id = run.info.run_id
    assert result["mlflow_run_id"] == run_id and run_id in capsys.readouterr().out
    assert json.loads((Path(result["run_dir"]) / MLFLOW_RUN_FILE).read_text())["run_id"] == run_id
    assert run.info.status == "FINISHED"

    params = run.data.params
    assert params["train.max_steps"] == "10" and params["run.name"] == "test"
    assert json.loads(params["tasks.topic.labels"])[:2] == ["ABBR", "ENTY"]
    assert params["tracking.mlflow_uri"] == store.as_uri()

    assert steps(client, run_id, "train/loss/sentiment") == [5, 10]
    assert steps(client, run_id, "lr/head:topic") == [5, 10]
    accuracy = client.get_metric_history(run_id, "validation/topic/accuracy")
    assert sorted(metric.step for metric in accuracy) == [5, 10]
    assert accuracy[-1].value == pytest.approx(result["metrics"]["topic"]["accuracy"])
    assert steps(client, run_id, "throughput/samples_per_s") == [10]
    assert not any(key.startswith("validation/topic/confusion") for key in run.data.metrics)  # lists left out

    artifacts = {item.path for item in client.list_artifacts(run_id, "report")}
    expected = {"report/report.json", "report/loss.png", "report/validation_accuracy.png"}
    assert expected <= artifacts, artifacts
    assert run.data.tags["export_dir"] == result["export_dir"]
    assert run.data.tags["best_dir"] == result["best_dir"]
    # TensorBoard still gets the same scalars beside MLflow.
    assert list((Path(result["run_dir"]) / "tensorboard").glob("events.out.tfevents.*"))


def test_a_resumed_run_continues_its_mlflow_run(make_config, tmp_path, mlflow_env):
    mlflow = pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    first = train_locally(tracked(make_config, store, max_steps=5))
    second = train_locally(tracked(make_config, store, max_steps=10))  # the same run.name: resumes at step 5
    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    run = only_run(client)
    assert first["mlflow_run_id"] == second["mlflow_run_id"] == run.info.run_id
    assert steps(client, run.info.run_id, "train/loss/sentiment") == [5, 10]
    assert run.data.params["train.max_steps"] == "5"  # params never change in MLflow: the new value is a tag
    assert run.data.tags["resumed/train.max_steps"] == "10"
    assert run.info.status == "FINISHED"


def test_mlflow_without_a_uri_is_refused_naming_the_key(make_config, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="tracking.mlflow_uri"):
        check_tracking(make_config(tracking={"backends": ["mlflow"]}))


def test_mlflow_uri_from_the_environment_becomes_absolute(make_config, monkeypatch, tmp_path):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:mlruns")
    config = check_tracking(make_config(tracking={"backends": ["mlflow"]}))
    assert config.tracking.mlflow_uri == (tmp_path / "mlruns").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert check_tracking(make_config(tracking={"backends": ["mlflow"]})).tracking.mlflow_uri == "http://mlflow:5000"


def test_mlflow_not_installed_is_refused_with_the_install_line(make_config, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *rest: None if name == "mlflow" else find_spec(name, *rest)
    )
    with pytest.raises(ConfigError, match=r"pip install '\.\[mlflow\]'"):
        check_tracking(make_config(tracking={"backends": ["tensorboard", "mlflow"]}))


def test_tracking_config_is_checked(make_config):
    with pytest.raises(ConfigError, match="tracking.backends"):
        make_config(tracking={"backends": ["mlflow", "mlflow"]})
    with pytest.raises(ConfigError, match="tracking.backends"):
        make_config(tracking={"backends": ["wandb"]})
    assert make_config().tracking.backends == ["tensorboard"]
