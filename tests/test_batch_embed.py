"""Batch embedding: pre-flight errors, the Ray Data callable against sentence-transformers, the job end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtl.data.contract import DataError
from mtl.inference.batch import (
    OUTPUT_MARKER,
    EmbedBatch,
    EmbedOptions,
    OutputError,
    RowOrderedParquet,
    check_inputs,
    check_output,
    plan_embedding,
    run_embedding,
)
from mtl.inference.exported_model import ExportedModel
from tests.conftest import write_parquet

TEXTS = ["the film was great", "who wrote hamlet ?", "a dull , lifeless mess", "how far is the moon ?"]


def options(tiny_export, tmp_path, **changes) -> EmbedOptions:
    base = {"model": str(tiny_export), "inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(tmp_path / "out")}
    return EmbedOptions(**{**base, **changes})


def test_missing_text_column_names_file_and_column(tiny_export, tmp_path):
    write_parquet(tmp_path / "in" / "a.parquet", {"sentence": TEXTS})
    with pytest.raises(DataError, match=r"a.parquet: no column\(s\) \['text'\]"):
        check_inputs(options(tiny_export, tmp_path))


def test_wrong_text_type_names_column(tiny_export, tmp_path):
    write_parquet(tmp_path / "in" / "a.parquet", {"text": [1, 2]})
    with pytest.raises(DataError, match=r"a.parquet: column 'text' is int64, expected string"):
        check_inputs(options(tiny_export, tmp_path))


def test_empty_texts_error_with_rows_or_are_counted(tiny_export, tmp_path):
    write_parquet(tmp_path / "in" / "a.parquet", {"text": ["fine", None, "  ", "ok"]})
    with pytest.raises(DataError, match=r"a.parquet: 2 null or empty text\(s\) in column 'text' \(rows \[1, 2\]\)"):
        check_inputs(options(tiny_export, tmp_path))
    _, counts = check_inputs(options(tiny_export, tmp_path, on_empty="skip"))
    assert counts == {"rows_in": 4, "skipped": {"empty_text": 2}}


def test_existing_output_needs_overwrite_and_a_marker_of_an_earlier_job(tiny_export, tmp_path):
    files = [str(write_parquet(tmp_path / "in" / "a.parquet", {"text": TEXTS}))]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.parquet").write_text("x")
    with pytest.raises(OutputError, match="--output .* exists and is not empty; pass --overwrite"):
        check_output(options(tiny_export, tmp_path), files)
    with pytest.raises(OutputError, match=r"not written by jobs.embed \(no _jobs_embed.json\)"):
        check_output(options(tiny_export, tmp_path, overwrite=True), files)
    (tmp_path / "out" / OUTPUT_MARKER).write_text("{}")
    assert check_output(options(tiny_export, tmp_path, overwrite=True), files) == (tmp_path / "out").resolve()


@pytest.mark.parametrize(("precision", "floor"), [("fp32", 0.999), ("bf16", 0.99)])
def test_embeddings_match_sentence_transformers(tiny_export, tmp_path, precision, floor):
    from sentence_transformers import SentenceTransformer

    embed = EmbedBatch(options(tiny_export, tmp_path, precision=precision, tasks=["all"], keep_columns=["id"]))
    out = embed(pa.table({"id": [10, 11, 12, 13], "text": TEXTS}))
    assert out.column_names == [
        "id", "embedding",
        "sentiment_label", "sentiment_label_id", "sentiment_score",
        "topic_label", "topic_label_id", "topic_score",
    ]  # fmt: skip
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    ours = np.stack(out.column("embedding").to_numpy(zero_copy_only=False))
    theirs = SentenceTransformer(str(tiny_export), device="cpu").encode(TEXTS, normalize_embeddings=True)
    cosine = (ours * theirs).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert np.all(cosine >= floor), cosine
    assert out.column("id").to_pylist() == [10, 11, 12, 13]
    labels = out.column("topic_label").to_pylist()
    assert all(label in {"ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"} for label in labels)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_job_writes_parquet_in_order_and_counts_skips(tiny_export, tmp_path):
    first = {"id": list(range(50)), "text": [f"row {i}" for i in range(50)]}
    write_parquet(tmp_path / "in" / "part-0.parquet", first)
    texts = [f"another sentence number {i}" for i in range(30)]
    texts[7] = ""
    write_parquet(tmp_path / "in" / "part-1.parquet", {"id": list(range(50, 80)), "text": texts})
    write_parquet(tmp_path / "out" / "old.parquet", {"id": [-1]})  # an earlier job's output, replaced as a whole
    (tmp_path / "out" / OUTPUT_MARKER).write_text("{}")
    other_job = tmp_path / "out.partial-20261127-000000-otherjob"  # a concurrent job's staging: not ours to touch
    write_parquet(other_job / "part.parquet", {"id": [-2]})
    command = [
        sys.executable, "-m", "jobs.embed", "--model", str(tiny_export),
        "--input", str(tmp_path / "in" / "*.parquet"), "--output", str(tmp_path / "out"), "--overwrite",
        "--keep-columns", "id", "--tasks", "sentiment", "--on-empty", "skip", "--batch-size", "16",
    ]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["rows_in"] == 80 and summary["rows_out"] == 79 and summary["skipped"] == {"empty_text": 1}
    assert summary["output"] == str(tmp_path / "out")
    assert summary["rows_per_s"] == pytest.approx(79 / summary["seconds"], rel=0.01)
    frame = pd.concat(pd.read_parquet(path) for path in sorted((tmp_path / "out").glob("*.parquet")))
    assert frame["id"].tolist() == [i for i in range(80) if i != 57]  # in input order, the skipped row left out
    expected = ExportedModel.load(tiny_export).embed([first["text"][3], texts[12]])
    got = np.stack(frame.set_index("id").loc[[3, 62], "embedding"].to_list())
    assert np.all((got * expected).sum(axis=1) >= 0.999)  # each embedding sits on its own row
    assert len(frame["embedding"].iloc[0]) == 32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalised by default
    assert set(frame["sentiment_label"]) <= {"negative", "positive"}
    leftovers = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("out."))
    assert leftovers == [other_job.name] and (other_job / "part.parquet").is_file()
    assert not (tmp_path / "out" / "old.parquet").exists()


def test_the_writer_puts_rows_in_input_order_whatever_order_blocks_arrive_in(tmp_path):
    """Blocks handed to write tasks out of order (what Ray Data 2.60 does despite preserve_order) and rows skipped
    under --on-empty skip: files read in name order give every kept row at its input position."""
    rows = np.arange(1000)
    skip = np.isin(rows, [0, 17, 500, 501, 999])
    table = pa.table({"id": rows, "__row": rows, "__skip": skip})
    blocks = [table.slice(start, 50) for start in range(0, 1000, 50)]
    order = np.random.default_rng(0).permutation(len(blocks))
    sink = RowOrderedParquet(tmp_path / "out")
    tasks = [[blocks[i] for i in order[:9]], [blocks[i] for i in order[9:]]]  # two write tasks, shuffled blocks
    assert sum(sink.write(task, None) for task in reversed(tasks)) == 995
    files = sorted((tmp_path / "out").glob("*.parquet"))
    assert len(files) > 2  # runs of consecutive rows were cut where a task's rows jump
    frame = pd.concat(pd.read_parquet(path) for path in files)
    assert frame.columns.tolist() == ["id"]
    assert frame["id"].tolist() == rows[~skip].tolist()


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_every_row_matches_its_reference_at_the_same_position_on_repeated_runs(tiny_export, tmp_path):
    """7,600 texts (the size the order bug was reported on) in 4 files of 256-row groups, batches of 64, two actors,
    skipped rows: run twice, compare every vector with the per-row reference by position."""
    import ray

    rng = np.random.default_rng(1)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) + f" {i}" for i in range(7600)]
    for i in (5, 1234, 3840, 7599):
        texts[i] = " "
    for part in range(4):
        table = pa.table({"text": texts[part * 1900 : (part + 1) * 1900]})
        (tmp_path / "in").mkdir(exist_ok=True)
        pq.write_table(table, tmp_path / "in" / f"part-{part}.parquet", row_group_size=256)
    kept = [text for text in texts if text.strip()]
    reference = ExportedModel.load(tiny_export).embed(kept)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        for run in range(2):
            job = options(
                tiny_export, tmp_path, output=str(tmp_path / f"out{run}"), batch_size=64, actors=2,
                cpus_per_actor=0.5, threads=1, on_empty="skip",
            )  # fmt: skip
            summary = run_embedding(plan_embedding(job))
            assert summary["rows_out"] == len(kept)
            files = sorted((tmp_path / f"out{run}").glob("*.parquet"))
            got = np.stack(pd.concat(pd.read_parquet(path) for path in files)["embedding"].to_list())
            misplaced = np.flatnonzero((got * reference).sum(axis=1) < 0.9999)
            assert misplaced.size == 0, f"run {run}: {misplaced.size} rows out of place, first {misplaced[:5]}"
    finally:
        ray.shutdown()
