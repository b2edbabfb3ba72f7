import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.prepare_data import main
from mtl.config import TaskConfig, load_config
from mtl.data.contract import DataError, read_validated
from mtl.data.prepare import prepare

TYPED_CONFIG = """
finetune: {strategy: full}
tasks:
  sentiment: {labels: [negative, positive]}
  nli: {type: pair_classification, labels: [entailment, neutral, contradiction]}
  sts: {type: similarity, score_range: [0, 5]}
  tags: {type: multilabel, labels: [sports, politics, tech]}
"""
TASKS = {
    "topic": TaskConfig(labels=["HUM", "LOC"]),
    "nli": TaskConfig(type="pair_classification", labels=["entailment", "neutral", "contradiction"]),
    "sts": TaskConfig(type="similarity", score_range=(0, 5)),
    "tags": TaskConfig(type="multilabel", labels=["sports", "politics", "tech"]),
}


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


def test_prepare_rejects_unknown_label_naming_file_and_line(tmp_path):
    csv = tmp_path / "q.csv"
    csv.write_text('text,label\n"who,\nexactly ?",HUM\n\nwhat ?,THING\n')  # a quoted line break, a blank line
    with pytest.raises(DataError, match=r"q.csv:5: column 'label': 'THING' is not one of \['HUM', 'LOC'\]"):
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


def test_prepare_reads_each_task_as_its_type_into_one_schema(tmp_path):
    sources = {
        "sentiment": "sentence\tlabel\ngood film\tpositive\nbad film\tnegative\n",
        "nli": "a man sleeps\ta person rests\tentailment\na dog runs\ta cat sits\tcontradiction\n",  # no header
        "sts": "sentence1\tsentence2\tscore\na cat\ta kitten\t4.2\na car\ta poem\t0\n",
        "tags": "text\tlabels\nmatch report\tsports\nvote on chips\tpolitics, tech\nthe weather\t\n",
    }
    arguments = []
    for task, content in sources.items():
        (tmp_path / f"{task}.tsv").write_text(content)
        arguments += ["--task", f"{task}={tmp_path / f'{task}.tsv'}"]
    (tmp_path / "config.yaml").write_text(TYPED_CONFIG)
    out = tmp_path / "out"
    summary = main([*arguments, "--config", str(tmp_path / "config.yaml"), "--output", str(out), "--shard-rows", "3"])
    assert summary["labels"]["sts"] == [] and summary["labels"]["nli"] == ["entailment", "neutral", "contradiction"]
    schemas = {pq.read_schema(path) for path in out.glob("*.parquet")}
    assert len(schemas) == 1 and len(list(out.glob("*.parquet"))) == 4  # every shard and validation.parquet alike
    assert schemas.pop().names == ["text", "text_pair", "task", "label", "score", "labels"]
    rows = [row for path in out.glob("*.parquet") for row in pq.read_table(path).to_pylist()]
    empty = {"text_pair": None, "label": None, "score": None, "labels": None}
    assert {**empty, "text": "good film", "task": "sentiment", "label": 1} in rows
    assert {**empty, "text": "a man sleeps", "text_pair": "a person rests", "task": "nli", "label": 0} in rows
    assert {**empty, "text": "a dog runs", "text_pair": "a cat sits", "task": "nli", "label": 2} in rows
    assert {**empty, "text": "a cat", "text_pair": "a kitten", "task": "sts", "score": 4.2} in rows
    assert {**empty, "text": "vote on chips", "task": "tags", "labels": [1, 2]} in rows
    assert {**empty, "text": "the weather", "task": "tags", "labels": []} in rows
    config = load_config(tmp_path / "config.yaml", [f"data.train={out}/train-*.parquet"])
    table, report = read_validated(config.data.train, config)  # the training contract reads what was written
    assert table.num_rows == summary["train_rows"] and report.skipped == {}


def test_prepare_writes_only_the_columns_its_tasks_need(tmp_path):
    source = tmp_path / "stsb.parquet"
    pq.write_table(pa.table({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "score": [1.5, 5.0]}), source)
    prepare({"sts": source}, {}, tmp_path / "out", validation_fraction=0, tasks=TASKS)
    table = pq.read_table(tmp_path / "out" / "train-00000.parquet")
    assert table.column_names == ["text", "text_pair", "task", "score"]
    assert sorted(table.column("score").to_pylist()) == [1.5, 5.0]
    pq.write_table(pa.table({"sentence1": ["a"], "sentence2": ["c"], "score": ["high"]}), source)
    with pytest.raises(DataError, match=r"stsb.parquet: column 'score' has type string, expected numbers"):
        prepare({"sts": source}, {}, tmp_path / "out", tasks=TASKS)


MISMATCHES = [
    ("topic", "who ?\twho is it ?\tHUM\n", False,
     r"topic.tsv: not a TSV of text, label per line: line 1 has 3 column\(s\), task 'topic' \(classification\) "
     r"reads text, label; task types come from --config"),
    ("topic", "sentence\tlabel\nwho ?\tHUM\nwhere ?\there ?\tLOC\n", True,
     r"topic.tsv: not a TSV of text, label per line: line 3 has 3 column\(s\), task 'topic' \(classification\)"),
    ("topic", "text\tsentence2\tlabel\nwho ?\twho is it ?\tHUM\n", True,
     r"topic.tsv: column\(s\) \['sentence2'\] hold a second text \(header, line 1\), but task 'topic'"),
    ("sts", "a cat\t4.2\n", True, r"sts.tsv: not a TSV of text, text_pair, score per line: line 1 has 2 column"),
    ("nli", "text\ttext_pair\tscore\na\tb\t1\n", True,
     r"nli.tsv \(header, line 1\): columns \['text', 'text_pair', 'score'\] do not fit: task 'nli' "
     r"\(pair_classification\) reads text, text_pair, label"),
    ("tags", "text\tlabels\nvote\tpolitics\textra\n", True, r"tags.tsv: not a TSV of text, labels per line: line 2"),
]  # fmt: skip


@pytest.mark.parametrize(("task", "content", "configured", "message"), MISMATCHES)
def test_a_source_whose_columns_do_not_fit_its_type_is_refused(tmp_path, task, content, configured, message):
    source = tmp_path / f"{task}.tsv"
    source.write_text(content)
    with pytest.raises(DataError, match=message):
        prepare({task: source}, {"topic": ["HUM", "LOC"]}, tmp_path / "out", tasks=TASKS if configured else None)
    assert not (tmp_path / "out").exists()


BAD_VALUES = [
    ("sts", "a\tb\t1\nc\td\thigh\n", r"sts.tsv:2: column 'score': 'high' is not a number"),
    ("sts", "text\ttext_pair\tscore\na\tb\t5\nc\td\t7.5\n",
     r"sts.tsv:3: column 'score': '7.5' is outside tasks.sts.score_range \[0.0, 5.0\]"),
    ("sts", "a\tb\tnan\n", r"sts.tsv:1: column 'score': 'nan' is not a finite number"),
    ("nli", "a\tb\tentailment\nc\td\tmaybe\n", r"nli.tsv:2: column 'label': 'maybe' is not one of \['entailment'"),
    ("nli", "a\tb\t3\n", r"nli.tsv:1: column 'label': 3 is not an id in 0..2 of \['entailment'"),
    ("tags", "text\tlabels\na\tsports,,tech\n", r"tags.tsv:2: column 'labels': 'sports,,tech' has an empty label"),
    ("tags", "a\tsports\nb\tsports, weather\n", r"tags.tsv:2: column 'labels': 'weather' is not one of \['sports'"),
]  # fmt: skip


@pytest.mark.parametrize(("task", "content", "message"), BAD_VALUES)
def test_a_bad_value_names_file_and_line(tmp_path, task, content, message):
    source = tmp_path / f"{task}.tsv"
    source.write_text(content)
    nli = ["entailment", "neutral", "contradiction"]  # what the source's label ids mean
    with pytest.raises(DataError, match=message):
        prepare({task: source}, {"nli": nli}, tmp_path / "out", tasks=TASKS)


def test_a_headerless_source_needs_label_names_from_outside_the_data(tmp_path):
    source = tmp_path / "topic.tsv"
    source.write_text("phrase\tcategory\nwho ?\tHUM\n")  # a header this reader does not know: not a label name
    with pytest.raises(DataError, match=r"topic.tsv: no header line, so label names cannot come from the data"):
        prepare({"topic": source}, {}, tmp_path / "out")
    with pytest.raises(DataError, match=r"topic.tsv:1: column 'label': 'category' is not one of \['HUM', 'LOC'\]"):
        prepare({"topic": source}, {"topic": ["HUM", "LOC"]}, tmp_path / "out")
