from pathlib import Path

import pytest

from mtl.evaluation.evaluate_export import evaluate_export
from mtl.train.local_session import train_locally
from tests.conftest import write_parquet, write_stsb

pytestmark = pytest.mark.timeout(300)


def test_evaluate_reports_tasks_and_stsb_per_pooling(make_config, tmp_path):
    config = make_config(train={"max_steps": 5})
    export = train_locally(config)["export_dir"]
    stsb = write_stsb(tmp_path / "stsb.parquet")
    result = evaluate_export(export, [config.data.validation[0]], str(stsb), compare_pooling=True)
    assert set(result["tasks"]) == {"sentiment", "topic"}
    assert result["tasks"]["topic"]["count"] + result["tasks"]["sentiment"]["count"] == 64
    assert len(result["tasks"]["topic"]["confusion"]) == 6
    assert sorted(Path(f).name for f in result["figures"]) == ["sentiment.png", "topic.png"]
    assert all(Path(f).is_file() and Path(export) not in Path(f).parents for f in result["figures"])
    assert set(result["stsb_spearman"]) == {"cls", "mean", "max"}
    assert all(value > 0.8 for value in result["stsb_spearman"].values()), result["stsb_spearman"]  # see write_stsb


def test_evaluate_names_missing_stsb_columns(make_config, tmp_path):
    export = train_locally(make_config(train={"max_steps": 2}))["export_dir"]
    bad = write_parquet(tmp_path / "bad.parquet", {"sentence1": ["a"], "score": [1.0]})
    with pytest.raises(ValueError, match=r"bad.parquet: STS-B file lacks column\(s\) \['sentence2'\]"):
        evaluate_export(export, [], str(bad))
