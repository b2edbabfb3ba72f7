"""Task types past training: `ExportedModel.predict`/`predict_pairs` maths, the metrics and the per-task report of an
export, the Serve app's ingress and heads run in this process (no Ray: a handle's call shape over local objects),
and the batch job's pair column (its callable here; the whole job under Ray, row by row)."""

import asyncio
import inspect
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fastapi.testclient import TestClient
from scipy.stats import spearmanr

from mtl.data.contract import DataError
from mtl.errors import UserError
from mtl.evaluation.classification import task_report
from mtl.evaluation.metrics import (
    choose_thresholds,
    classification_metrics,
    multilabel_metrics,
    similarity_metrics,
)
from mtl.export_format import model_info, read_manifest, task_type, write_manifest
from mtl.inference.batch import EmbedBatch, EmbedOptions, check_inputs, plan_embedding, resolve_tasks, run_embedding
from mtl.inference.exported_model import ExportedModel, TaskTypeError
from mtl.model.heads import check_head, pair_features, save_head
from tests.conftest import make_tiny_export, write_parquet

TASKS = {
    "sentiment": ["negative", "positive"],
    "nli": {"type": "pair_classification", "labels": ["entailment", "neutral", "contradiction"]},
    "sts": {"type": "similarity", "score_range": [0, 5]},
    "tags": {"type": "multilabel", "labels": ["a", "b", "c"]},
}
THRESHOLDS = [0.3, 0.5, 0.7]  # unequal, so a threshold taken from the wrong label shows
TEXTS = ["a gripping , beautiful film", "who wrote hamlet ?", "dull and lifeless", "how far is the moon ?"]
PAIRS = [
    ["a man plays a guitar", "someone plays an instrument"],
    ["a cat sits on the mat", "a cat sits on the mat"],
    ["stocks fell sharply", "the sky is blue"],
]


@pytest.fixture(scope="module")
def typed_export(tiny_backbone, tmp_path_factory):
    """A tiny export with one task of each type, its manifest carrying what training writes: multilabel thresholds
    and each task's validation figures."""
    export = make_tiny_export(tmp_path_factory.mktemp("typed") / "export", tiny_backbone, tasks=TASKS)
    manifest = read_manifest(export)
    manifest["tasks"]["tags"]["thresholds"] = THRESHOLDS
    manifest["tasks"]["sts"]["validation"] = {"spearman": 0.8125, "pearson": 0.79, "count": 40}
    manifest["tasks"]["nli"]["validation"] = {"accuracy": 0.5, "macro_f1": 0.25, "count": 40}
    write_manifest(export, manifest)
    return export


@pytest.fixture(scope="module")
def model(typed_export):
    return ExportedModel.load(typed_export)


# ExportedModel


def test_heads_load_for_the_tasks_that_have_one(model):
    assert set(model.heads) == {"sentiment", "nli", "tags"}  # a similarity task has no head file
    assert model.heads["nli"].in_features == 4 * model.dim


def test_pair_predictions_are_the_heads_and_cosines_of_the_two_texts(model):
    predictions = model.predict_pairs(PAIRS)
    assert [set(row) for row in predictions] == [{"nli", "sts"}] * len(PAIRS)  # default: the pair tasks
    left = model.encode([first for first, _ in PAIRS])
    right = model.encode([second for _, second in PAIRS])
    with torch.no_grad():
        expected = torch.softmax(model.heads["nli"](pair_features(left, right)), dim=-1).numpy()
    embedded = [model.embed(pair) for pair in PAIRS]
    for row, prediction in enumerate(predictions):
        nli = prediction["nli"]
        probabilities = np.array(list(nli["probabilities"].values()))
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(probabilities, expected[row], atol=1e-5)
        assert (
            nli["label_id"] == int(expected[row].argmax()) and nli["label"] == TASKS["nli"]["labels"][nli["label_id"]]
        )
        cosine = float(embedded[row][0] @ embedded[row][1])
        sts = prediction["sts"]
        assert sts["cosine"] == pytest.approx(cosine, abs=1e-5)
        assert sts["score"] == pytest.approx(5 * min(max(cosine, 0.0), 1.0), abs=1e-4)
    assert predictions[1]["sts"]["score"] == pytest.approx(5.0, abs=1e-4)  # identical texts: the top of [0, 5]


def test_multilabel_chooses_every_label_at_or_above_its_threshold(model):
    predictions = model.predict(TEXTS)
    assert [set(row) for row in predictions] == [{"sentiment", "tags"}] * len(TEXTS)  # default: single-text tasks
    with torch.no_grad():
        expected = torch.sigmoid(model.heads["tags"](model.encode(TEXTS))).numpy()
    for row, prediction in enumerate(predictions):
        tags = prediction["tags"]
        probabilities = np.array([tags["probabilities"][name] for name in ["a", "b", "c"]])
        np.testing.assert_allclose(probabilities, expected[row], atol=1e-5)
        chosen = probabilities >= np.array(THRESHOLDS)
        assert tags["label_ids"] == np.flatnonzero(chosen).tolist()
        assert tags["labels"] == [name for name, hit in zip(["a", "b", "c"], chosen, strict=True) if hit]
        assert tags["thresholds"] == {"a": 0.3, "b": 0.5, "c": 0.7}
        assert sum(prediction["sentiment"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_a_task_asked_for_the_other_kind_of_input_is_an_error_naming_it(model):
    with pytest.raises(TaskTypeError, match=r"task 'nli' is a pair_classification task: it scores pairs"):
        model.predict(TEXTS, ["sentiment", "nli"])
    with pytest.raises(TaskTypeError, match=r"task 'tags' is a multilabel task: it scores single texts"):
        model.predict_pairs(PAIRS, ["sts", "tags"])
    assert list(model.predict_pairs(PAIRS[:1], ["sts"])[0]) == ["sts"]


# Metrics and the per-task report


def test_type_metrics_by_hand():
    assert similarity_metrics([0.1, 0.5, 0.9, 0.2], [0.0, 3.0, 5.0, 1.0])["spearman"] == pytest.approx(1.0)
    assert similarity_metrics([0.3], [1.0]) == {"spearman": 0.0, "pearson": 0.0, "count": 1}  # no ranking: 0, not NaN
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    probabilities = np.array([[0.9, 0.2, 0.1], [0.6, 0.7, 0.3], [0.2, 0.4, 0.1], [0.1, 0.1, 0.6]])
    # at 0.5: a 2/2 right; b 1 of 2 found; c one false positive -> micro P 3/4, R 3/4; macro (1 + 2/3 + 0) / 3
    metrics = multilabel_metrics(targets, probabilities, [0.5, 0.5, 0.5])
    assert metrics == pytest.approx({"micro_f1": 0.75, "macro_f1": (1 + 2 / 3 + 0) / 3, "count": 4})
    # a: 0.25..0.6 all perfect, nearest 0.5 wins; b: 0.25..0.4 perfect; c: no positives, the default
    assert choose_thresholds(targets, probabilities) == [0.5, 0.4, 0.5]
    assert multilabel_metrics(targets, probabilities, [0.5, 0.4, 0.5])["micro_f1"] == pytest.approx(8 / 9)


def test_task_report_scores_every_row_by_its_own_task_type(model):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(48):
        task_id = i % 4  # sentiment, nli, sts, tags (the manifest's order)
        text = f"sentence {i} about {rng.choice(['cats', 'stocks', 'films', 'the moon'])}"
        pair = f"another {i} on {rng.choice(['dogs', 'markets', 'books'])}" if task_id in (1, 2) else None
        label = int(rng.integers(0, 8)) if task_id == 3 else int(rng.integers(0, 3 if task_id == 1 else 2))
        label = 0 if task_id == 2 else label
        score = float(rng.uniform(0, 5)) if task_id == 2 else float("nan")
        rows.append({"text": text, "text_pair": pair, "task_id": task_id, "label": label, "score": score})
    schema = pa.schema([("text", pa.string()), ("text_pair", pa.string()), ("task_id", pa.int32()),
                        ("label", pa.int64()), ("score", pa.float32())])  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=schema)
    report = task_report(model, table, list(TASKS))
    assert {name: item["type"] for name, item in report.items()} == {
        "sentiment": "classification", "nli": "pair_classification", "sts": "similarity", "tags": "multilabel",
    }  # fmt: skip
    of = {task_id: [row for row in rows if row["task_id"] == task_id] for task_id in range(4)}
    sts = model.predict_pairs([[r["text"], r["text_pair"]] for r in of[2]], ["sts"])
    cosines = [p["sts"]["cosine"] for p in sts]
    scores = np.float32([r["score"] for r in of[2]])
    assert report["sts"]["count"] == 12
    assert report["sts"]["spearman"] == pytest.approx(spearmanr(cosines, scores).statistic, abs=1e-6)
    nli = model.predict_pairs([[r["text"], r["text_pair"]] for r in of[1]], ["nli"])
    want = classification_metrics([r["label"] for r in of[1]], [p["nli"]["label_id"] for p in nli], 3)
    assert {key: report["nli"][key] for key in want} == want
    tags = model.predict([r["text"] for r in of[3]], ["tags"])
    targets = np.array([[(r["label"] >> bit) & 1 for bit in range(3)] for r in of[3]])
    probabilities = np.array([list(p["tags"]["probabilities"].values()) for p in tags])
    assert report["tags"] == pytest.approx({"type": "multilabel", **multilabel_metrics(targets, probabilities,
                                                                                        THRESHOLDS)})  # fmt: skip
    assert report["sentiment"]["count"] == 12 and len(report["sentiment"]["confusion"]) == 2


# Serving, in this process


class LocalHandle:
    """A deployment handle's call shape (`handle.method.remote(...)`, then awaited) over an object in this process;
    counts the calls and rows each method gets."""

    def __init__(self, target, method: str = "__call__", calls: list | None = None):
        self.target, self.method, self.calls = target, method, [] if calls is None else calls

    def __getattr__(self, name: str) -> "LocalHandle":
        return LocalHandle(self.target, name, self.calls)

    def remote(self, *args):
        self.calls.append((self.method, [len(arg) for arg in args]))

        async def call():
            result = getattr(self.target, self.method)(*args)
            return await result if inspect.isawaitable(result) else result

        return asyncio.ensure_future(call())


LIMITS = {"max_texts": 256, "max_chars": 2000, "max_body_bytes": 4 * 1024 * 1024, "call_timeout_s": 60,
          "auth_token_env": "MTL_TEST_UNSET_TOKEN", "allow_unauthenticated": False, "host": "127.0.0.1"}  # fmt: skip


@pytest.fixture(scope="module")
def app(typed_export):
    """The real Ingress, Encoder and TaskHead classes wired as `serve_app.app.build_app` wires them, minus Ray."""
    from ray import serve

    from serve_app.encoder import Encoder
    from serve_app.ingress import Ingress, api
    from serve_app.task_head import TaskHead

    manifest = read_manifest(typed_export)
    heads = {}
    for task in manifest["tasks"]:
        if task_type(manifest, task) != "similarity":
            heads[task] = TaskHead.func_or_class(str(typed_export), task)
            heads[task].reconfigure({"head_file": None})
    encoder = LocalHandle(Encoder.func_or_class(str(typed_export), "fp32", None))
    handles = {task: LocalHandle(head) for task, head in heads.items()}
    user_class = Ingress.func_or_class.__mro__[1]  # the class as written, under Serve's ASGI wrapper
    ingress = user_class(encoder, handles, model_info(manifest), LIMITS, str(typed_export))
    # The constructor sets these on the app its pickled class refers to; here `api` itself serves.
    api.state.auth_token_env, api.state.max_body_bytes = LIMITS["auth_token_env"], LIMITS["max_body_bytes"]
    context = SimpleNamespace(servable_object=ingress, replica_id=SimpleNamespace(unique_id="in-process"))
    patch = pytest.MonkeyPatch()
    patch.setattr(serve, "get_replica_context", lambda: context)  # how Serve's class-based routes find `self`
    with TestClient(api) as client:
        yield SimpleNamespace(client=client, ingress=ingress, heads=heads, encoder=encoder, handles=handles)
    patch.undo()


def test_served_pairs_and_multilabel_equal_the_offline_model(app, model):
    response = app.client.post("/v1/predict", json={"pairs": PAIRS})
    assert response.status_code == 200, response.text
    served, offline = response.json()["predictions"], model.predict_pairs(PAIRS)
    for got, want in zip(served, offline, strict=True):
        assert set(got) == {"nli", "sts"}
        assert got["nli"]["label"] == want["nli"]["label"]
        assert got["nli"]["probabilities"] == pytest.approx(want["nli"]["probabilities"], abs=1e-5)
        assert got["sts"] == pytest.approx(want["sts"], abs=1e-5)
    texts = app.client.post("/v1/predict", json={"texts": TEXTS}).json()["predictions"]
    for got, want in zip(texts, model.predict(TEXTS), strict=True):
        assert set(got) == {"sentiment", "tags"}
        assert got["tags"]["labels"] == want["tags"]["labels"] and got["tags"]["label_ids"] == want["tags"]["label_ids"]
        assert got["tags"]["probabilities"] == pytest.approx(want["tags"]["probabilities"], abs=1e-5)
        assert got["tags"]["thresholds"] == {"a": 0.3, "b": 0.5, "c": 0.7}
        assert got["sentiment"]["label"] == want["sentiment"]["label"]
    only = app.client.post("/v1/predict", json={"pairs": PAIRS[:1], "tasks": ["sts"]}).json()["predictions"]
    assert list(only[0]) == ["sts"]


def test_a_merged_batch_encodes_each_text_once_and_each_head_sees_each_input_once(app, model):
    """Four requests merged into one batch (what the ingress's batcher hands `_infer`): texts shared across them are
    encoded once, the pair head gets each distinct pair once, and each request gets its own rows back."""
    calls = [
        (TEXTS[:2], ("sentiment", "tags"), False),
        ([text for pair in PAIRS for text in pair], ("nli", "sts"), True),
        ([*PAIRS[0], *PAIRS[0]], ("nli",), True),  # the same pair twice, and again in the request before
        ([TEXTS[0], PAIRS[0][0]], (), False),  # embeddings only
    ]
    app.encoder.calls.clear()
    for handle in app.handles.values():
        handle.calls.clear()
    results = asyncio.run(app.ingress._infer(calls))
    distinct = len({text for texts, _, _ in calls for text in texts})
    assert app.encoder.calls == [("encode_counted", [distinct])]  # vectors and token counts, one call
    assert app.handles["nli"].calls == [("__call__", [len(PAIRS), len(PAIRS)])]  # 3 distinct pairs, two batches
    assert app.handles["sentiment"].calls == [("__call__", [2])]
    offline = model.predict_pairs(PAIRS)
    _, outputs, _ = results[1]
    np.testing.assert_allclose(outputs["sts"], [p["sts"]["cosine"] for p in offline], atol=1e-5)
    np.testing.assert_allclose(outputs["nli"].sum(axis=1), 1.0, atol=1e-5)
    _, repeated, _ = results[2]
    np.testing.assert_allclose(repeated["nli"], [list(offline[0]["nli"]["probabilities"].values())] * 2, atol=1e-5)
    vectors, nothing, counts = results[3]
    assert nothing == {} and vectors.shape == (2, model.dim) and counts.shape == (2,)


BAD = [
    ({"texts": ["a"], "pairs": [["a", "b"]]}, 422, "texts or pairs: give exactly one of them"),
    ({"tasks": ["sts"]}, 422, "texts or pairs: give exactly one of them"),
    ({"pairs": [["a"]]}, 422, "pairs"),
    ({"pairs": []}, 422, "pairs"),
    ({"pairs": [["a", "b"], ["c", "nul\x00"]]}, 422, "pair at index 1, text 1 holds U+0000 (NUL) at character 3"),
    ({"pairs": [["\ud800", "b"]]}, 422, "pair at index 0, text 0 holds U+D800 (a lone surrogate)"),
    ({"pairs": [["a", " "]]}, 422, "pair at index 0 has an empty text"),
    ({"pairs": [["a", "b"]], "tasks": ["tags"]}, 422, "tasks: task 'tags' is a multilabel task: it scores single"),
    ({"texts": ["a"], "tasks": ["nli"]}, 422, "tasks: task 'nli' is a pair_classification task: it scores pairs"),
    ({"pairs": [["a", "b"]], "tasks": ["nope"]}, 422, "unknown task(s) ['nope']"),
    ({"pairs": [["a", "b"]] * 129}, 413, "pairs: 258 texts, at most 256"),
    ({"pairs": [["a", "b"], ["c", "x" * 2001]]}, 413, "pairs[1][1]: 2001 characters"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD, ids=[m for _, _, m in BAD])
def test_bad_predict_bodies_are_a_4xx_naming_the_field(app, body, status, message):
    # ASCII JSON, as a client sends it: a lone surrogate travels as its escape
    response = app.client.post("/v1/predict", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.text


def test_model_lists_every_task_with_its_type_and_validation(app):
    info = app.client.get("/v1/model").json()
    types = {name: item["type"] for name, item in info["task_info"].items()}
    assert types == {"sentiment": "classification", "nli": "pair_classification", "sts": "similarity",
                     "tags": "multilabel"}  # fmt: skip
    assert info["task_info"]["sts"]["validation"]["spearman"] == 0.8125
    assert info["task_info"]["sts"]["score_range"] == [0, 5] and info["task_info"]["sts"]["labels"] == []
    assert info["task_info"]["tags"]["thresholds"] == THRESHOLDS
    assert set(info["heads"]) == {"sentiment", "nli", "tags"}  # no head deployment for similarity
    assert info["tasks"]["sts"] == []


def test_openapi_documents_pairs_and_each_prediction_type(app):
    schemas = app.client.get("/openapi.json").json()["components"]["schemas"]
    request = schemas["PredictRequest"]["properties"]
    assert {"texts", "pairs", "tasks"} <= set(request) and "pair tasks" in request["pairs"]["description"]
    for name in ("TaskPrediction", "MultilabelPrediction", "SimilarityPrediction", "TaskInfo"):
        assert all(field.get("description") for field in schemas[name]["properties"].values()), name


def test_a_head_of_another_type_is_refused_and_the_old_head_keeps_serving(app, typed_export, tmp_path):
    manifest = read_manifest(typed_export)
    labels, encoder = TASKS["nli"]["labels"], manifest["encoder_fingerprint"]
    wrong = tmp_path / "nli-classification.safetensors"
    save_head(torch.nn.Linear(32, 3), wrong, "nli", labels, encoder, "classification")  # right task, labels, encoder
    message = "it is a classification head, task 'nli' is pair_classification"
    with pytest.raises(UserError, match=message):
        check_head(wrong, "nli", labels, encoder, "pair_classification")
    before = app.client.post("/v1/predict", json={"pairs": PAIRS, "tasks": ["nli"]}).json()
    head = app.heads["nli"]
    head.reconfigure({"head_file": str(wrong)})  # what `serve deploy` with user_config.head_file does
    assert head.refused["head_file"] == str(wrong) and message in head.refused["error"]
    shown = app.client.get("/v1/model").json()["heads"]["nli"]
    assert message in shown["refused"]["error"] and shown["head_file"].endswith("heads/nli.safetensors")
    assert app.client.post("/v1/predict", json={"pairs": PAIRS, "tasks": ["nli"]}).json() == before
    good = tmp_path / "nli.safetensors"
    save_head(torch.nn.Linear(4 * 32, 3), good, "nli", labels, encoder, "pair_classification")
    head.reconfigure({"head_file": str(good)})  # a pair head of the right shape rolls out
    assert head.refused is None and head.source["head_file"] == str(good)
    head.reconfigure({"head_file": None})


# The batch job


def pair_options(export, tmp_path, **changes) -> EmbedOptions:
    base = {"model": str(export), "inputs": [str(tmp_path / "in" / "*.parquet")], "output": str(tmp_path / "out"),
            "text_pair_column": "text_pair", "tasks": ["all"]}  # fmt: skip
    return EmbedOptions(**{**base, **changes})


def test_the_pair_column_is_checked_before_ray_starts(typed_export, tmp_path):
    write_parquet(tmp_path / "in" / "a.parquet", {"text": ["x", "y"], "other": ["p", "q"]})
    with pytest.raises(DataError, match=r"a.parquet: no column\(s\) \['text_pair'\]"):
        check_inputs(pair_options(typed_export, tmp_path))
    write_parquet(tmp_path / "in" / "a.parquet", {"text": ["x", "y"], "text_pair": [1, 2]})
    with pytest.raises(DataError, match=r"a.parquet: column 'text_pair' is int64, expected string"):
        check_inputs(pair_options(typed_export, tmp_path))
    write_parquet(tmp_path / "in" / "a.parquet", {"text": ["x", "", "z", "w"], "text_pair": ["p", None, " ", "q"]})
    with pytest.raises(DataError, match=r"a.parquet: 2 null or empty text\(s\) in column 'text_pair' \(rows \[1, 2\]"):
        check_inputs(pair_options(typed_export, tmp_path, text_column="text_pair", text_pair_column="text"))
    _, counts = check_inputs(pair_options(typed_export, tmp_path, on_empty="skip"))
    assert counts == {"rows_in": 4, "skipped": {"empty_text": 1, "empty_text_pair": 1}}  # row 1 counted once


def test_the_flag_reaches_the_options():
    from jobs.embed import parse_options

    argv = ["--model", "m", "--input", "in.parquet", "--output", "out", "--text-pair-column", "sentence2"]
    assert parse_options([*argv, "--tasks", "all"]).text_pair_column == "sentence2"
    assert parse_options(argv[:6]).text_pair_column is None


def test_tasks_all_means_what_the_columns_allow(typed_export, tmp_path):
    manifest = read_manifest(typed_export)
    assert resolve_tasks(manifest, pair_options(typed_export, tmp_path)) == ["sentiment", "nli", "sts", "tags"]
    assert resolve_tasks(manifest, pair_options(typed_export, tmp_path, text_pair_column=None)) == ["sentiment", "tags"]
    with pytest.raises(UserError, match=r"--tasks: 'sts' \(similarity\) score two texts.*--text-pair-column"):
        resolve_tasks(manifest, pair_options(typed_export, tmp_path, text_pair_column=None, tasks=["tags", "sts"]))
    with pytest.raises(ValueError, match="text_pair_column: 'text' is the text column"):
        pair_options(typed_export, tmp_path, text_pair_column="text")


def test_the_batch_callable_writes_each_types_columns(typed_export, model, tmp_path):
    embed = EmbedBatch(pair_options(typed_export, tmp_path, keep_columns=["id"]))
    out = embed(pa.table({"id": [0, 1, 2], "text": [p[0] for p in PAIRS], "text_pair": [p[1] for p in PAIRS]}))
    assert out.column_names == [
        "id", "embedding", "sentiment_label", "sentiment_label_id", "sentiment_score", "nli_label", "nli_label_id",
        "nli_score", "sts_score", "sts_cosine", "tags_labels", "tags_probabilities",
    ]  # fmt: skip
    assert out.schema.field("tags_labels").type == pa.list_(pa.string())
    assert out.schema.field("tags_probabilities").type == pa.list_(pa.float32())
    np.testing.assert_allclose(np.stack(out.column("embedding").to_numpy(zero_copy_only=False)),
                               model.embed([p[0] for p in PAIRS]), atol=1e-5)  # fmt: skip
    pairs, texts = model.predict_pairs(PAIRS), model.predict([p[0] for p in PAIRS])
    assert out.column("nli_label").to_pylist() == [p["nli"]["label"] for p in pairs]
    np.testing.assert_allclose(out.column("sts_cosine").to_numpy(), [p["sts"]["cosine"] for p in pairs], atol=1e-5)
    np.testing.assert_allclose(out.column("sts_score").to_numpy(), [p["sts"]["score"] for p in pairs], atol=1e-4)
    assert out.column("tags_labels").to_pylist() == [t["tags"]["labels"] for t in texts]


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_the_job_scores_each_pair_row_at_its_position(typed_export, model, tmp_path):
    """640 pair rows in 2 files of 128-row groups, batches of 48, two actors, two rows skipped for an empty second
    text: every output row equals `predict_pairs` (and `predict`) on the input row at that position."""
    import ray

    rng = np.random.default_rng(3)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 12)))) + f" {i}" for i in range(640)]
    seconds = [" ".join(rng.choice(words, size=int(rng.integers(1, 12)))) for _ in range(640)]
    seconds[10], seconds[401] = "", None
    for part in range(2):
        rows = slice(part * 320, (part + 1) * 320)
        table = pa.table({"id": np.arange(640)[rows], "text": texts[rows], "text_pair": seconds[rows]})
        (tmp_path / "in").mkdir(exist_ok=True)
        pq.write_table(table, tmp_path / "in" / f"part-{part}.parquet", row_group_size=128)
    kept = [i for i in range(640) if seconds[i]]
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        options = pair_options(typed_export, tmp_path, keep_columns=["id"], batch_size=48, actors=2,
                               cpus_per_actor=0.5, threads=1, on_empty="skip")  # fmt: skip
        summary = run_embedding(plan_embedding(options))
    finally:
        ray.shutdown()
    assert summary["rows_in"] == 640 and summary["rows_out"] == 638 and summary["skipped"] == {"empty_text_pair": 2}
    frame = pd.concat(pd.read_parquet(path) for path in sorted((tmp_path / "out").glob("*.parquet")))
    assert frame["id"].tolist() == kept  # in input order
    pairs = model.predict_pairs([[texts[i], seconds[i]] for i in kept])
    singles = model.predict([texts[i] for i in kept])
    assert frame["nli_label"].tolist() == [p["nli"]["label"] for p in pairs]
    nli_best = [max(p["nli"]["probabilities"].values()) for p in pairs]
    np.testing.assert_allclose(frame["nli_score"].to_numpy(), nli_best, atol=1e-5)
    np.testing.assert_allclose(frame["sts_cosine"].to_numpy(), [p["sts"]["cosine"] for p in pairs], atol=1e-5)
    np.testing.assert_allclose(frame["sts_score"].to_numpy(), [p["sts"]["score"] for p in pairs], atol=1e-4)
    assert [list(labels) for labels in frame["tags_labels"]] == [s["tags"]["labels"] for s in singles]
    probabilities = np.stack(frame["tags_probabilities"].to_list())
    np.testing.assert_allclose(probabilities, [list(s["tags"]["probabilities"].values()) for s in singles], atol=1e-5)
    assert frame["sentiment_label"].tolist() == [s["sentiment"]["label"] for s in singles]
    embeddings = np.stack(frame["embedding"].to_list())
    assert np.all((embeddings * model.embed([texts[i] for i in kept])).sum(axis=1) >= 0.9999)
