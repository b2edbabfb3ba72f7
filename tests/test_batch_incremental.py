"""Incremental re-embedding: outputs say which encoder made them; `--incremental` copies the vectors of unchanged
texts embedded by the same encoder and embeds only the rest, rows still in input order."""

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtl.errors import UserError
from mtl.export_format import read_manifest
from mtl.inference.batch import (
    OUTPUT_MARKER,
    EmbedBatch,
    EmbedOptions,
    OutputError,
    RowOrderedParquet,
    output_metadata,
    plan_embedding,
    read_pieces,
    run_embedding,
    text_columns,
)
from mtl.inference.exported_model import ExportedModel
from tests.conftest import make_tiny_backbone, make_tiny_export

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def texts(count: int, seed: int, start: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 20)))) + f" {start + i}" for i in range(count)]


def write_input(path, ids: list[int], rows: list[str], row_group_size: int = 128):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "text": rows}), path, row_group_size=row_group_size)


def job(model, inputs, output, **changes) -> EmbedOptions:
    base = {"model": str(model), "inputs": [str(path) for path in inputs], "output": str(output)}
    base["keep_columns"] = ["id"]
    return EmbedOptions(**{**base, **changes})


def run_in_process(options: EmbedOptions) -> dict:
    """The job's read -> embed -> write path without Ray (one process, batches of 64): what `run_embedding` maps."""
    plan = plan_embedding(options)
    reading = {"columns": [*text_columns(plan.options), "id"], "text_column": plan.options.text_column}
    if plan.reuse:
        reading |= {"previous": plan.reuse.files, "dim": plan.settings["dim"]}
    rows = read_pieces(pa.Table.from_pylist(plan.pieces), **reading)
    embed = EmbedBatch(plan.options)
    staging = plan.output.with_name(plan.output.name + ".partial")
    written = RowOrderedParquet(staging, metadata=output_metadata(plan)).write(
        [embed(rows.slice(start, 64)) for start in range(0, rows.num_rows, 64)], None
    )
    (staging / OUTPUT_MARKER).write_text("{}")
    shutil.rmtree(plan.output, ignore_errors=True)
    staging.rename(plan.output)
    return {"rows_out": written, "rows_reused": plan.reuse.reused if plan.reuse else 0, "plan": plan}


def read_output(directory) -> pd.DataFrame:
    return pd.concat(pd.read_parquet(path) for path in sorted(directory.glob("*.parquet")))


def vectors(frame: pd.DataFrame) -> np.ndarray:
    return np.stack(frame["embedding"].to_list())


@pytest.fixture(scope="module")
def exports(tiny_backbone, tmp_path_factory):
    """A, B (another random encoder: another fingerprint) and A2 (A's encoder with new heads: A's fingerprint)."""
    root = tmp_path_factory.mktemp("incremental-exports")
    first = make_tiny_export(root / "a" / "export", tiny_backbone)
    second = make_tiny_export(root / "b" / "export", make_tiny_backbone(root / "other-bert"))
    reheaded = make_tiny_export(root / "a2" / "export", tiny_backbone)
    fingerprints = [read_manifest(path)["encoder_fingerprint"] for path in (first, second, reheaded)]
    assert fingerprints[0] != fingerprints[1] and fingerprints[0] == fingerprints[2], fingerprints
    return {"A": first, "B": second, "A2": reheaded}


def test_reused_vectors_are_copied_exactly_and_new_rows_embedded(exports, tmp_path):
    """Without Ray: a repeated text and new rows; the re-headed export (same encoder) reuses every stored row."""
    old = texts(200, seed=0)
    write_input(tmp_path / "in" / "a.parquet", list(range(200)), old)
    assert run_in_process(job(exports["A"], [tmp_path / "in" / "a.parquet"], tmp_path / "v1"))["rows_out"] == 200
    new = [old[5], *texts(40, seed=1, start=200)]  # a repeat of an embedded text, then new ones
    write_input(tmp_path / "in" / "b.parquet", list(range(200, 241)), new)
    inputs = [tmp_path / "in" / "a.parquet", tmp_path / "in" / "b.parquet"]
    update = job(exports["A2"], inputs, tmp_path / "v2", incremental=True, previous=str(tmp_path / "v1"))
    result = run_in_process(update)
    assert result["rows_out"] == 241 and result["rows_reused"] == 201  # 200 stored rows and the repeated text
    before, after = read_output(tmp_path / "v1"), read_output(tmp_path / "v2")
    assert after["id"].tolist() == list(range(241))
    assert np.array_equal(vectors(after)[:200], vectors(before))  # copied, bit for bit
    assert np.array_equal(vectors(after)[200], vectors(before)[5])  # the repeated text takes the stored vector
    reference = ExportedModel.load(exports["A"]).embed(old + new)
    np.testing.assert_allclose(vectors(after), reference, atol=1e-5)


def test_other_settings_reuse_nothing(exports, tmp_path):
    write_input(tmp_path / "in" / "a.parquet", list(range(50)), texts(50, seed=2))
    run_in_process(job(exports["A"], [tmp_path / "in" / "a.parquet"], tmp_path / "v1"))
    changed = job(exports["A"], [tmp_path / "in" / "a.parquet"], tmp_path / "v2", incremental=True,
                  previous=str(tmp_path / "v1"), normalize=False)  # fmt: skip
    reuse = plan_embedding(changed).reuse
    assert (reuse.rows, reuse.reusable, reuse.reused) == (50, 0, 0)


def test_incremental_refuses_what_it_cannot_reuse(exports, tmp_path):
    write_input(tmp_path / "in" / "a.parquet", [0, 1], ["one", "two"])
    inputs = [tmp_path / "in" / "a.parquet"]
    with pytest.raises(ValueError, match="tasks: --incremental reuses stored embeddings only"):
        job(exports["A"], inputs, tmp_path / "out", incremental=True, tasks=["all"])
    with pytest.raises(ValueError, match="previous: .* pass --incremental too"):
        job(exports["A"], inputs, tmp_path / "out", previous=str(tmp_path / "old"))
    with pytest.raises(ValueError, match=r"keep_columns: \['embedding_fingerprint'\] are columns the job writes"):
        job(exports["A"], inputs, tmp_path / "out", keep_columns=["embedding_fingerprint"])
    (tmp_path / "old").mkdir()
    with pytest.raises(OutputError, match=r"--previous .*old: not an output of jobs.embed \(no _jobs_embed.json\)"):
        plan_embedding(job(exports["A"], inputs, tmp_path / "out", incremental=True, previous=str(tmp_path / "old")))
    (tmp_path / "old" / OUTPUT_MARKER).write_text("{}")  # an output from before rows carried fingerprints
    pq.write_table(pa.table({"id": [0], "embedding": [[0.0] * 32]}), tmp_path / "old" / "part-000000000000.parquet")
    with pytest.raises(OutputError, match=r"no column\(s\) \['embedding_fingerprint', 'embedding_text_hash'\]"):
        plan_embedding(job(exports["A"], inputs, tmp_path / "out", incremental=True, previous=str(tmp_path / "old")))
    with pytest.raises(OutputError, match="exists and is not empty; pass --overwrite"):  # in place needs --overwrite
        plan_embedding(job(exports["A"], inputs, tmp_path / "old", incremental=True))
    nested = job(exports["A"], inputs, tmp_path / "old" / "new", incremental=True, previous=str(tmp_path / "old"))
    with pytest.raises(OutputError, match="inside --previous"):
        plan_embedding(nested)
    unfingerprinted = tmp_path / "export"
    shutil.copytree(exports["A"], unfingerprinted)
    manifest = json.loads((unfingerprinted / "mtl.json").read_text())
    del manifest["encoder_fingerprint"]
    (unfingerprinted / "mtl.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="records no encoder_fingerprint"):
        plan_embedding(job(unfingerprinted, inputs, tmp_path / "out", incremental=True, previous=str(tmp_path / "old")))


def test_the_command_line_takes_incremental_and_previous(capsys):
    from jobs.embed import parse_options

    base = ["--model", "m", "--input", "in.parquet", "--output", "out"]
    options = parse_options([*base, "--incremental", "--previous", "old"])
    assert options.incremental and options.previous == "old"
    with pytest.raises(SystemExit) as exit_info:
        parse_options([*base, "--incremental", "--tasks", "all"])
    assert exit_info.value.code == 2
    assert "error: tasks: --incremental reuses stored embeddings only" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_incremental_runs_on_ray_reuse_what_is_current_and_keep_input_order(exports, tmp_path):
    """640 rows embedded with A; 60 rows appended. Incremental with A: the 640 stored vectors copied exactly, only
    the 60 new rows embedded. Incremental with B in place (--overwrite): every row stale, all 700 embedded. Vectors
    match each encoder's own by position; files, record and summary name the export version and fingerprint."""
    import ray

    old, new = texts(640, seed=3), texts(60, seed=4, start=640)
    write_input(tmp_path / "in" / "part-0.parquet", list(range(640)), old)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        ray_job = {"batch_size": 64, "actors": 2, "cpus_per_actor": 0.5, "threads": 1}
        first = run_embedding(plan_embedding(job(exports["A"], [tmp_path / "in" / "part-0.parquet"],
                                                 tmp_path / "v1", **ray_job)))  # fmt: skip
        assert (first["rows_out"], first["rows_reused"], first["rows_embedded"]) == (640, 0, 640)
        write_input(tmp_path / "in" / "part-1.parquet", list(range(640, 700)), new)
        inputs = [tmp_path / "in" / "part-0.parquet", tmp_path / "in" / "part-1.parquet"]
        second = run_embedding(plan_embedding(job(exports["A"], inputs, tmp_path / "v2", incremental=True,
                                                  previous=str(tmp_path / "v1"), **ray_job)))  # fmt: skip
        assert (second["rows_out"], second["rows_reused"], second["rows_embedded"]) == (700, 640, 60)
        assert second["previous"] == {"output": str((tmp_path / "v1").resolve()), "rows": 640, "reusable": 640}
        stored, updated = read_output(tmp_path / "v1"), read_output(tmp_path / "v2")
        assert updated["id"].tolist() == list(range(700))
        assert np.array_equal(vectors(updated)[:640], vectors(stored))  # copied, bit for bit
        np.testing.assert_allclose(vectors(updated), ExportedModel.load(exports["A"]).embed(old + new), atol=1e-5)

        third = run_embedding(plan_embedding(job(exports["B"], inputs, tmp_path / "v2", incremental=True,
                                                 overwrite=True, **ray_job)))  # fmt: skip
        assert (third["rows_out"], third["rows_reused"], third["rows_embedded"]) == (700, 0, 700)
        assert third["previous"]["reusable"] == 0  # every stored row is A's
        replaced = read_output(tmp_path / "v2")
        assert replaced["id"].tolist() == list(range(700))
        np.testing.assert_allclose(vectors(replaced), ExportedModel.load(exports["B"]).embed(old + new), atol=1e-5)
    finally:
        ray.shutdown()
    fingerprint = read_manifest(exports["B"])["encoder_fingerprint"]
    version = exports["B"].resolve().name
    assert version.startswith("export-step0-")  # the published version directory, not the symlink's name
    assert set(replaced["embedding_fingerprint"]) == {fingerprint}
    for path in (tmp_path / "v2").glob("*.parquet"):
        metadata = pq.read_schema(path).metadata
        assert metadata[b"mtl.export_id"].decode() == version
        assert metadata[b"mtl.encoder_fingerprint"].decode() == fingerprint
    record = json.loads((tmp_path / "v2" / OUTPUT_MARKER).read_text())
    assert (record["export_id"], record["encoder_fingerprint"]) == (version, fingerprint)
    assert (third["export_id"], third["encoder_fingerprint"]) == (version, fingerprint)
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("v2.")) == []  # swapped whole
