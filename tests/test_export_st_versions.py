"""An export loads in the sentence-transformers a user serves it with, not only the installed one: older majors (and
Infinity, which pins sentence-transformers < 4) run in a subprocess against a copy of that version installed once
into ~/.cache/mtl-test-envs/ and put first on PYTHONPATH, so it shadows the installed one while torch and
transformers stay the project's."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_tiny_export

POOLINGS = ["mean", "cls", "max"]
# The last release of each older major; 3.x is also what Infinity loads models with.
OLDER = {
    "st-3.4.1": ["sentence-transformers==3.4.1"],
    "st-4.1.0": ["sentence-transformers==4.1.0"],
    "st-5.7.0": ["sentence-transformers==5.7.0"],
    "infinity-0.0.78-st-3.4.1": ["infinity-emb==0.0.78", "sentence-transformers==3.4.1"],
}
MAX_SEQ_LENGTH = 32  # make_tiny_export's; the long text runs past it, so truncation is compared too
TEXTS = ["the film was great", "who is the answer here ?", "a long and winding review " * 12]
ENV_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mtl-test-envs"

# Run by the older version: embeddings of every export, and what its sentence-transformers logged at WARNING.
LOADER = """
import json, logging, sys
request = json.loads(sys.argv[1])
warned = []
class Collect(logging.Handler):
    def emit(self, record):
        warned.append(record.getMessage())
logging.getLogger("sentence_transformers").addHandler(Collect(logging.WARNING))
import sentence_transformers
embeddings = {}
for pooling, export in request["exports"].items():
    if request["infinity"]:  # Infinity's own loader and its encode path (tokenize, forward, normalise)
        from infinity_emb.args import EngineArgs
        from infinity_emb.transformer.embedder.sentence_transformer import SentenceTransformerPatched
        args = EngineArgs(
            model_name_or_path=export, engine="torch", device="cpu", bettertransformer=False, compile=False
        )
        model = SentenceTransformerPatched(engine_args=args)
        vectors = model.encode_post(model.encode_core(model.encode_pre(request["texts"])))
    else:
        model = sentence_transformers.SentenceTransformer(export, device="cpu")
        assert model.max_seq_length == request["max_seq_length"], model.max_seq_length
        vectors = model.encode(request["texts"])
    embeddings[pooling] = [[float(value) for value in row] for row in vectors]
print(json.dumps({"version": sentence_transformers.__version__, "embeddings": embeddings, "warned": warned}))
"""


@pytest.fixture(scope="module")
def exports(tiny_backbone, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("st-versions")
    return {
        pooling: make_tiny_export(root / pooling / "export", tiny_backbone, pooling=pooling) for pooling in POOLINGS
    }


@pytest.fixture(scope="module")
def installed_embeddings(exports) -> dict[str, np.ndarray]:
    from sentence_transformers import SentenceTransformer

    return {
        pooling: SentenceTransformer(str(export), device="cpu").encode(TEXTS) for pooling, export in exports.items()
    }


def assert_same_directions(expected: np.ndarray, actual: np.ndarray, label: str) -> None:
    expected, actual = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    assert expected.shape == actual.shape, f"{label}: shape {actual.shape}, expected {expected.shape}"
    cosine = (expected * actual).sum(axis=1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(actual, axis=1)
    assert np.all(cosine > 0.9999), f"{label}: cosine {cosine}"
    assert np.allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-4), f"{label}: not normalised"


def older_environment(name: str) -> Path:
    """`OLDER[name]` installed (without dependencies) into the cache, once; skips the test when pip cannot fetch it."""
    target = ENV_CACHE / name
    if (target / "sentence_transformers" / "__init__.py").is_file():
        return target
    ENV_CACHE.mkdir(parents=True, exist_ok=True)
    staging = ENV_CACHE / f".{name}.{uuid.uuid4().hex[:8]}"  # renamed into place whole: never a half-installed cache
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    try:
        completed = subprocess.run(
            [*command, "--target", str(staging), *OLDER[name]], capture_output=True, text=True, timeout=600
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.skip(f"pip install {' '.join(OLDER[name])} took over 600 s (is PyPI reachable?)")
    if completed.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.skip(f"pip install {' '.join(OLDER[name])} failed (is PyPI reachable?): {completed.stderr[-1500:]}")
    try:
        staging.rename(target)
    except OSError:  # another run installed it first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def test_export_names_modules_every_version_can_import(exports):
    export = exports["mean"]
    modules = json.loads((export / "modules.json").read_text())
    assert [module["type"] for module in modules] == [
        "sentence_transformers.models.Transformer",
        "sentence_transformers.models.Pooling",
        "sentence_transformers.models.Normalize",
    ]
    assert json.loads((export / "sentence_bert_config.json").read_text()) == {
        "max_seq_length": MAX_SEQ_LENGTH,
        "do_lower_case": False,
    }
    pooling = json.loads((export / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 32 and pooling["pooling_mode_mean_tokens"] is True


@pytest.mark.parametrize("pooling", POOLINGS)
def test_installed_sentence_transformers_loads_the_export_quietly_with_our_embeddings(exports, pooling, caplog):
    from sentence_transformers import SentenceTransformer

    from mtl.inference.exported_model import ExportedModel

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        model = SentenceTransformer(str(exports[pooling]), device="cpu")
    theirs = model.encode(TEXTS)
    assert model.max_seq_length == MAX_SEQ_LENGTH
    assert type(model[1]).__name__ == "Pooling" and model[1].pooling_mode == pooling
    logged = [record.getMessage() for record in caplog.records if record.name.startswith("sentence_transformers")]
    assert not logged, logged
    from_st = [str(w.message) for w in caught if "sentence_transformers" in w.filename]
    assert not from_st, from_st
    assert_same_directions(ExportedModel.load(exports[pooling]).embed(TEXTS), theirs, f"installed, {pooling}")


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("name", list(OLDER))
def test_older_sentence_transformers_loads_the_export_with_the_same_embeddings(name, exports, installed_embeddings):
    environment = older_environment(name)
    request = {
        "exports": {pooling: str(export) for pooling, export in exports.items()},
        "texts": TEXTS,
        "max_seq_length": MAX_SEQ_LENGTH,
        "infinity": name.startswith("infinity"),
    }
    python_path = os.pathsep.join(filter(None, [str(environment), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run(
        [sys.executable, "-c", LOADER, json.dumps(request)], capture_output=True, text=True, timeout=600, env=env
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    expected_version = next(spec for spec in OLDER[name] if spec.startswith("sentence-transformers==")).split("==")[1]
    assert result["version"] == expected_version, f"{name} imported sentence-transformers {result['version']}"
    assert not result["warned"], result["warned"]
    for pooling in POOLINGS:
        assert_same_directions(installed_embeddings[pooling], result["embeddings"][pooling], f"{name}, {pooling}")
