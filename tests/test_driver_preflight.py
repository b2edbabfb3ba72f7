"""Pre-flight before any worker starts: data too small for a micro batch stops with an error naming the settings
(never a silent endless wait), and workers get absolute model paths."""

import pytest

from mtl.config import ConfigError
from mtl.data.stream_position import StreamPosition
from mtl.train import ray_session
from mtl.train.local_session import train_locally
from mtl.train.preflight import check_rows_per_worker
from tests.conftest import synthetic_rows, write_parquet


def test_driver_refuses_fewer_rows_per_worker_than_a_micro_batch(make_config):
    config = make_config(train={"micro_batch_size": 32}, scaling={"num_workers": 2, "cpus_per_worker": 0.5})
    with pytest.raises(ConfigError, match=r"5 rows gives each of scaling.num_workers=2 workers 2 rows.*micro_batch"):
        check_rows_per_worker(5, config)
    check_rows_per_worker(64, config)  # exactly one micro batch each: fine


def test_local_training_refuses_a_five_row_file(make_config, tmp_path):
    path = write_parquet(tmp_path / "five.parquet", synthetic_rows(5))
    config = make_config(data={"train": [str(path)], "validation": []}, train={"micro_batch_size": 32})
    with pytest.raises(ConfigError, match="an epoch holds 5 rows, fewer than train.micro_batch_size=32"):
        train_locally(config)


def test_a_ray_shard_without_one_full_micro_batch_raises_instead_of_spinning(monkeypatch):
    calls = []

    class EmptyShard:
        def iter_batches(self, **kwargs):
            calls.append(kwargs["batch_size"])
            return iter(())

    monkeypatch.setattr(ray_session.ray.train, "get_dataset_shard", lambda name: EmptyShard())
    session = object.__new__(ray_session.RaySession)
    session.__dict__.update(rank=1, micro_batch_size=32, seed=0, position=StreamPosition())
    with pytest.raises(ConfigError, match=r"rank 1: .*fewer rows than one micro batch \(train.micro_batch_size=32\)"):
        next(session.train_batches())
    assert calls == [32]  # one epoch tried, not an endless loop


def test_driver_hands_workers_absolute_model_paths(make_config, tiny_export, tiny_backbone, tmp_path, monkeypatch):
    from mtl.train.preflight import resolved_model_paths

    monkeypatch.chdir(tiny_export.parent)
    config = make_config(model={"init_from": tiny_export.name, "backbone": str(tiny_backbone)})
    resolved = resolved_model_paths(config)
    assert resolved.model.init_from == str(tiny_export.resolve())
    with pytest.raises(ConfigError, match=r"model.init_from='nowhere': not an export directory"):
        resolved_model_paths(make_config(model={"init_from": "nowhere"}))


def test_storage_every_node_cannot_see_is_refused_before_any_worker_starts(make_config, monkeypatch, tmp_path):
    import ray

    from mtl.train import driver

    for uri in ("s3://bucket/runs", "gs://bucket/runs"):
        with pytest.raises(ConfigError, match=r"run.storage_path='(s3|gs)://bucket/runs': object-store URIs are not"):
            driver.train_on_ray(make_config(run={"storage_path": uri}))  # refused before data, Ray or workers
    root = str(tmp_path / "runs")
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": True}])
    blind = {"10.0.0.1": True, "10.0.0.2": False}
    with pytest.raises(ConfigError, match=r"not visible from node\(s\) \['10.0.0.2'\].*shared storage every node"):
        driver.check_storage(root, visibility=lambda root: blind)
    assert driver.check_storage(root, visibility=lambda root: dict.fromkeys(blind, True)) == root


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_storage_probe_runs_on_every_node_of_a_real_cluster(tmp_path):
    import ray

    from mtl.train.driver import storage_visibility

    ray.init(num_cpus=1, include_dashboard=False)
    try:
        assert list(storage_visibility(str(tmp_path / "runs")).values()) == [True]
        assert [path.name for path in (tmp_path / "runs").iterdir()] == []  # the marker is removed
    finally:
        ray.shutdown()
