"""STS-B Spearman: how well cosine similarity of an encoder's embeddings ranks gold similarity scores.

The one place this is computed: the run report (starting encoder vs export) and `jobs.evaluate` call it.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from scipy.stats import spearmanr

from mtl.data.contract import DataError
from mtl.inference.exported_model import ExportedModel, pair_cosine

STSB_COLUMNS = ("sentence1", "sentence2", "score")


def read_stsb(path: str, key: str = "") -> pa.Table:
    """The STS-B Parquet at `path` (`key` names the setting it came from), its three columns checked."""
    table = pq.read_table(path)
    missing = sorted(set(STSB_COLUMNS) - set(table.column_names))
    if missing:
        where = f"{key}={path}" if key else path
        raise DataError(f"{where}: STS-B file lacks column(s) {missing} (has {table.column_names})")
    return table


def stsb_spearman(model: ExportedModel, path: str, pooling: str | None = None) -> float:
    """Spearman correlation of cosine(sentence1, sentence2) with the gold `score` column of the Parquet at `path`."""
    table = read_stsb(path)
    left = model.encode(table.column("sentence1").to_pylist(), pooling=pooling).numpy()
    right = model.encode(table.column("sentence2").to_pylist(), pooling=pooling).numpy()
    return float(spearmanr(pair_cosine(left, right), table.column("score").to_numpy()).statistic)
