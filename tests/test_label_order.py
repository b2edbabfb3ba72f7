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


HEAD_MISMATCHES = [
    ("task", {"task": "topic"}, r"it is the head of task 'topic', not 'sentiment'"),
    ("labels", {"labels": SENTIMENT[::-1]}, r"its labels are \['positive', 'negative'\], expected \['negative'"),
    ("encoder", {"encoder": "f" * 32}, r"it was trained with encoder f{32}, this encoder is"),
]


@pytest.mark.parametrize(("what", "change", "message"), HEAD_MISMATCHES, ids=[m[0] for m in HEAD_MISMATCHES])
def test_a_head_for_another_task_labels_or_encoder_is_refused(make_config, tiny_backbone, tmp_path, what, change,
                                                               message):  # fmt: skip
    """By a Serve rollout (`load_task_head` with head_file) and by `model.init_from`."""
    from mtl.inference.exported_model import load_task_head
    from mtl.model.heads import head_metadata, save_head
    from tests.conftest import make_tiny_export

    export = make_tiny_export(tmp_path / "export", tiny_backbone)
    path = export / "heads" / "sentiment.safetensors"
    metadata = head_metadata(path)
    assert metadata["task"] == "sentiment" and metadata["labels"] == SENTIMENT
    assert metadata["encoder"] == json.loads((export / "mtl.json").read_text())["encoder_fingerprint"]
    load_task_head(export, "sentiment", path)  # the export's own head, passed as a rollout: accepted
    spec = {"task": "sentiment", "labels": SENTIMENT, "encoder": metadata["encoder"], **change}
    other = tmp_path / f"other-{what}.safetensors"
    save_head(torch.nn.Linear(32, 2), other, spec["task"], spec["labels"], spec["encoder"])
    with pytest.raises(ValueError, match=message):
        load_task_head(export, "sentiment", other)  # a Serve rollout (head_file)
    other.replace(path)  # the same file inside the export that model.init_from reads
    with pytest.raises(ValueError, match=message):
        build_model(make_config(model={"init_from": str(export)}))
