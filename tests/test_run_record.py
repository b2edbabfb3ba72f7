"""Resume checks what it resumes: same run name + other settings or data is refused, naming what changed."""

import json

import pytest

from mtl.config import ConfigError
from mtl.train.local_session import train_locally
from mtl.train.run_record import RECORD, check_or_record
from tests.conftest import TOPIC, synthetic_rows, write_parquet


def test_same_name_with_other_labels_lr_or_data_is_refused(make_config, tmp_path):
    run_dir = tmp_path / "runs" / "r"
    files = [str(write_parquet(tmp_path / "d" / "train.parquet", synthetic_rows(40)))]
    config = make_config()
    check_or_record(run_dir, config, files)
    (run_dir / "checkpoint_1").mkdir()
    check_or_record(run_dir, config, files)  # the same run: resumes
    check_or_record(run_dir, make_config(train={"log_every": 1}, run={"max_failures": 3}), files)  # may change
    with pytest.raises(ConfigError, match=r"(?s)Changed:\n  tasks.topic.labels: \['ABBR'.*\['NUM'.*if_exists=fresh"):
        check_or_record(run_dir, make_config(tasks={"topic": {"labels": TOPIC[::-1]}}), files)
    with pytest.raises(ConfigError, match=r"optim.backbone_lr: 2e-05 -> 0.001"):
        check_or_record(run_dir, make_config(optim={"backbone_lr": 1e-3}), files)
    write_parquet(tmp_path / "d" / "train.parquet", synthetic_rows(41))
    with pytest.raises(ConfigError, match=r"data file changed: .*train.parquet \(40 -> 41 rows"):
        check_or_record(run_dir, config, files)

    check_or_record(run_dir, make_config(run={"if_exists": "fresh"}), files)
    aside = [path for path in run_dir.parent.iterdir() if path.name.startswith("r.replaced-")]
    assert len(aside) == 1 and (aside[0] / "checkpoint_1").is_dir()
    assert json.loads((run_dir / RECORD).read_text())["data"][0]["rows"] == 41


def test_local_training_refuses_to_resume_a_run_with_reversed_labels(make_config):
    first = train_locally(make_config(train={"max_steps": 2, "eval_every": 2, "checkpoint_every": 2}))
    assert first["steps"] == 2
    reversed_labels = make_config(
        train={"max_steps": 2, "eval_every": 2, "checkpoint_every": 2}, tasks={"topic": {"labels": TOPIC[::-1]}}
    )
    with pytest.raises(ConfigError, match="tasks.topic.labels"):
        train_locally(reversed_labels)


def test_a_run_recorded_before_the_cpu_speed_switches_resumes_and_may_switch_them(make_config, tmp_path):
    run_dir = tmp_path / "runs" / "r"
    files = [str(write_parquet(tmp_path / "d" / "train.parquet", synthetic_rows(40)))]
    check_or_record(run_dir, make_config(), files)
    (run_dir / "checkpoint_1").mkdir()
    record = json.loads((run_dir / RECORD).read_text())
    del record["config"]["scaling"]["allocator"], record["config"]["train"]["fast_dropout"]  # an older release's
    (run_dir / RECORD).write_text(json.dumps(record))
    check_or_record(run_dir, make_config(), files)
    check_or_record(run_dir, make_config(scaling={"allocator": "system"}, train={"fast_dropout": False}), files)
