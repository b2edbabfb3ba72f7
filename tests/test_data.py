import pyarrow as pa
import pytest

from mtl.data.contract import DataError, read_validated
from tests.conftest import write_parquet

GOOD = {"text": ["good film", "who is it ?"], "task": ["sentiment", "topic"], "label": [1, 3]}


def config_for(make_config, path, on_bad_rows="error"):
    return make_config(data={"train": [str(path)], "on_bad_rows": on_bad_rows})


def test_clean_rows_come_out_with_task_ids(make_config, tmp_path):
    path = write_parquet(tmp_path / "good.parquet", GOOD)
    table, report = read_validated([str(path)], config_for(make_config, path))
    assert table.column("task_id").to_pylist() == [0, 1]  # order of config.tasks
    assert table.column("label").to_pylist() == [1, 3]
    assert report.as_dict() == {"rows_in": 2, "rows_out": 2, "skipped": {}}


def test_label_names_are_mapped_to_ids(make_config, tmp_path):
    path = write_parquet(tmp_path / "names.parquet", {**GOOD, "label": ["positive", "HUM"]})
    table, _ = read_validated([str(path)], config_for(make_config, path))
    assert table.column("label").to_pylist() == [1, 3]


BAD_ROWS = [
    ("null_text", {"text": [None]}, "column 'text': text is null"),
    ("empty_text", {"text": ["   "]}, "column 'text': text is empty"),
    (
        "unknown_task",
        {"task": ["news"]},
        "column 'task': task is null or not a configured task (value 'news')",
    ),
    ("null_label", {"label": [None]}, "column 'label': label is null"),
    ("label_out_of_range", {"label": [7]}, "column 'label': label id is outside the task's labels (value 7)"),
]


@pytest.mark.parametrize(("reason", "bad", "message"), BAD_ROWS, ids=[case[0] for case in BAD_ROWS])
def test_each_bad_row_kind_errors_with_file_row_column(make_config, tmp_path, reason, bad, message):
    columns = {key: GOOD[key] + [GOOD[key][0]] for key in GOOD}  # two good rows, then one bad (row 2)
    for key, value in bad.items():
        columns[key][2] = value[0]
    schema = pa.schema([("text", pa.string()), ("task", pa.string()), ("label", pa.int64())])
    path = write_parquet(tmp_path / "bad.parquet", columns, schema)
    with pytest.raises(DataError) as error:
        read_validated([str(path)], config_for(make_config, path))
    assert f"{path}: row 2, {message}" in str(error.value)
    assert "data.on_bad_rows=skip" in str(error.value)

    table, report = read_validated([str(path)], config_for(make_config, path, "skip"))
    assert table.num_rows == 2
    assert report.skipped == {reason: 1}


def test_unknown_label_name(make_config, tmp_path):
    path = write_parquet(tmp_path / "names.parquet", {**GOOD, "label": ["positive", "PLACE"]})
    with pytest.raises(DataError, match=r"row 1, column 'label': label name is not one of .*'PLACE'"):
        read_validated([str(path)], config_for(make_config, path))


def test_skip_counts_across_files_and_reasons(make_config, tmp_path):
    first = write_parquet(tmp_path / "a.parquet", {"text": ["ok", ""], "task": ["topic", "topic"], "label": [0, 1]})
    second = write_parquet(tmp_path / "b.parquet", {"text": ["ok", "x"], "task": ["sentiment", "?"], "label": [0, 0]})
    config = make_config(data={"train": [str(tmp_path / "*.parquet")], "on_bad_rows": "skip"})
    table, report = read_validated(config.data.train, config)
    assert table.num_rows == 2
    assert report.as_dict() == {"rows_in": 4, "rows_out": 2, "skipped": {"empty_text": 1, "unknown_task": 1}}
    assert first.exists() and second.exists()


def test_missing_column_and_wrong_type_name_file_and_column(make_config, tmp_path):
    path = write_parquet(tmp_path / "nolabel.parquet", {"text": ["a"], "task": ["topic"]})
    with pytest.raises(
        DataError,
        match=r"nolabel.parquet: missing column 'label' .*needed from row 0 on; task 'topic' is a classification",
    ):
        read_validated([str(path)], config_for(make_config, path))
    path = write_parquet(tmp_path / "float.parquet", {**GOOD, "label": [1.0, 2.0]})
    with pytest.raises(DataError, match=r"float.parquet: column 'label' has type double, expected integer or string"):
        read_validated([str(path)], config_for(make_config, path))


def test_glob_matching_nothing_names_the_key(make_config, tmp_path):
    config = make_config()
    with pytest.raises(DataError, match=r"data.validation: '.*nothing-\*.parquet' matches no file"):
        read_validated([str(tmp_path / "nothing-*.parquet")], config, "data.validation")
