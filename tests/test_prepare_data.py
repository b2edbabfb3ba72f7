import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.prepare_data import main
from mtl.data.contract import DataError, read_validated
from mtl.data.prepare import prepare


def test_prepare_mixes_tsv_and_csv_into_the_contract(tmp_path, make_config):
    tsv = tmp_path / "sst.tsv"
    tsv.write_text('sentence\tlabel\nit \'s "great"\t1\nawful\t0\nfine , fine\t1\n')
    csv = tmp_path / "questions.csv"
    csv.write_text('text,label\n"who, exactly ?",HUM\nwhere is it ?,LOC\n')
    summary = main(
        [
            "--task",
            f"sentiment={tsv}",
            "--labels",
            "sentiment=negative,positive",
            "--task",
            f"topic={csv}",
            "--labels",
            "topic=ABBR,ENTY,DESC,HUM,LOC,NUM",
            "--output",
            str(tmp_path / "out"),
            "--shard-rows",
            "2",
            "--validation-fraction",
            "0.2",
        ]
    )
    assert summary["train_rows"] == 4 and summary["validation_rows"] == 1
    shards = sorted((tmp_path / "out").glob("train-*.parquet"))
    assert [pq.read_metadata(path).num_rows for path in shards] == [2, 2]
    labels = json.loads((tmp_path / "out" / "labels.json").read_text())
    assert labels == {
        "sentiment": ["negative", "positive"],
        "topic": ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"],
    }
    rows = [row for path in sorted((tmp_path / "out").glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert {"text": 'it \'s "great"', "task": "sentiment", "label": 1} in rows
    assert {"text": "who, exactly ?", "task": "topic", "label": 3} in rows
    config = make_config(data={"train": [str(tmp_path / "out" / "*.parquet")]})
    table, report = read_validated(config.data.train, config)
    assert table.num_rows == 5 and report.skipped == {}


def test_prepare_reads_parquet_and_labels_json(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    pq.write_table(pa.table({"text": ["a", "b"], "label": [0, 1]}), source / "train.parquet")
    (source / "labels.json").write_text(json.dumps({"names": ["neg", "pos"]}))
    summary = prepare({"sentiment": source / "train.parquet"}, {}, tmp_path / "out", validation_fraction=0)
    assert summary["labels"] == {"sentiment": ["neg", "pos"]}


def test_prepare_rejects_unknown_label_with_row(tmp_path):
    csv = tmp_path / "q.csv"
    csv.write_text("text,label\nwho ?,HUM\nwhat ?,THING\n")
    with pytest.raises(DataError, match=r"q.csv: row 1, column 'label': 'THING' is not one of"):
        prepare({"topic": csv}, {"topic": ["HUM", "LOC"]}, tmp_path / "out")


def test_prepare_replaces_its_own_shards_and_refuses_a_directory_of_foreign_ones(tmp_path):
    source = tmp_path / "src.parquet"
    pq.write_table(pa.table({"text": [f"text {i}" for i in range(50)], "label": [i % 2 for i in range(50)]}), source)
    out = tmp_path / "out"
    first = prepare({"sentiment": source}, {"sentiment": ["neg", "pos"]}, out, shard_rows=10, validation_fraction=0)
    assert len(first["files"]) == 5
    second = prepare({"sentiment": source}, {"sentiment": ["neg", "pos"]}, out, shard_rows=25, validation_fraction=0)
    assert sorted(p.name for p in out.glob("*.parquet")) == sorted(Path(f).name for f in second["files"])  # no stale
    other = tmp_path / "other"
    other.mkdir()
    pq.write_table(pa.table({"text": ["old"], "label": [0]}), other / "train-00007.parquet")
    with pytest.raises(DataError, match=r"holds 1 file\(s\) prepare_data did not write \(train-00007.parquet\)"):
        prepare({"sentiment": source}, {"sentiment": ["neg", "pos"]}, other, validation_fraction=0)
    assert (other / "train-00007.parquet").is_file()  # nothing lost
