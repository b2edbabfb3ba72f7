"""Label ids cannot silently shift: data, prepared data and `model.init_from` are checked by label names."""

import json

import pyarrow.parquet as pq
import pytest
import torch

from mtl.data.contract import DataError, read_validated
from mtl.data.prepare import prepare
from mtl.model.multitask import build_model
from tests.conftest import SENTIMENT, TOPIC, synthetic_rows, write_parquet


@pytest.mark.parametrize("layout", ["prepare_data", "shared"])
def test_training_refuses_data_whose_labels_json_orders_a_task_differently(make_config, tmp_path, layout):
    path = write_parquet(tmp_path / "data" / "train-00000.parquet", synthetic_rows(32))
    reversed_topic = list(reversed(TOPIC))
    names = {"sentiment": SENTIMENT, "topic": reversed_topic}
    content = names if layout == "prepare_data" else {"tasks": {t: {"names": n} for t, n in names.items()}}
    (tmp_path / "data" / "labels.json").write_text(json.dumps(content))
    config = make_config(data={"train": [str(path)]})
    with pytest.raises(DataError, match=r"labels.json: label ids of task 'topic' mean \['NUM'.*tasks.topic.labels"):
        read_validated([str(path)], config)
    agreeing = make_config(data={"train": [str(path)]}, tasks={"topic": {"labels": reversed_topic}})
    table, _ = read_validated([str(path)], agreeing)
    assert table.num_rows == 32


def test_prepare_writes_ids_in_the_configs_order(tmp_path):
    source = tmp_path / "topic.tsv"
    source.write_text("text\tlabel\nwho is it ?\tHUM\nwhere is it ?\tLOC\nhow many ?\tNUM\n")
    summary = prepare({"topic": source}, {}, tmp_path / "out", validation_fraction=0.0, order={"topic": TOPIC})
    assert summary["labels"] == {"topic": TOPIC}
    table = pq.read_table(tmp_path / "out" / "train-00000.parquet")
    by_text = dict(zip(table.column("text").to_pylist(), table.column("label").to_pylist(), strict=True))
    assert by_text == {"who is it ?": TOPIC.index("HUM"), "where is it ?": TOPIC.index("LOC"), "how many ?": 5}
    assert json.loads((tmp_path / "out" / "labels.json").read_text()) == {"topic": TOPIC}
    with pytest.raises(DataError, match=r"source labels \['NUM'\] are not in the config's tasks.topic.labels"):
        prepare({"topic": source}, {}, tmp_path / "bad", order={"topic": ["HUM", "LOC"]})


def test_init_from_checks_labels_and_frozen_heads(make_config, tiny_export):
    with pytest.raises(ValueError, match=r"task 'topic' was trained with labels \['ABBR'.*list them in the export's"):
        build_model(make_config(model={"init_from": str(tiny_export)}, tasks={"topic": {"labels": TOPIC[::-1]}}))
    extra = {"sentiment": {"labels": SENTIMENT}, "topic": {"labels": TOPIC}, "spam": {"labels": ["no", "yes"]}}
    frozen = {"strategy": "head_only", "freeze_heads": ["spam"]}
    with pytest.raises(ValueError, match=r"no head for task 'spam'.*freeze_heads keeps 'spam' fixed"):
        build_model(make_config(model={"init_from": str(tiny_export)}, tasks=extra, finetune=frozen))
    model = build_model(make_config(model={"init_from": str(tiny_export)}, tasks=extra))  # spam trains: fine
    exported = build_model(make_config(model={"init_from": str(tiny_export)}))
    assert torch.equal(model.heads["topic"].weight, exported.heads["topic"].weight)
