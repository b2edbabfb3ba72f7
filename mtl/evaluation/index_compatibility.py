"""Index compatibility: can an index of vectors stored by the starting encoder still be searched with the new one's?

After a retrain, queries are embedded by the new encoder while a vector store may still hold the starting encoder's
vectors. The reference is what a fully re-embedded store returns: for each text, its `k` nearest other texts with
the new encoder on both sides (new queries, new index). Against it, two recalls@k (the mean share of the reference
neighbours found):

- `recall_at_10_new_query_old_index`: new-encoder queries searched in an index built by the starting encoder, the
  situation of a store that was not re-embedded; the advice reads this one;
- `recall_at_10_same_encoder`: the starting encoder on both sides, the old system's own neighbours: how far
  retraining moved the neighbourhoods even for a store and queries that agree.

Vectors are normalised and compared by dot product (cosine); each text's own vector is left out of its neighbours,
since query and document sets are the same texts. A rotated copy of an encoder keeps every neighbourhood
(`same_encoder` 1.0) yet its queries find noise in the old index (`new_query_old_index` near k/n).
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

K = 10
REEMBED_BELOW = 0.9  # recall of new queries in the old index under which stored vectors should be re-embedded


def nearest(queries: np.ndarray, documents: np.ndarray, k: int) -> np.ndarray:
    """Indices `(n, k)` of each query's k highest-cosine documents, best first, leaving out the document at the
    query's own position (queries and documents are vectors of the same n texts)."""
    assert queries.shape == documents.shape, f"queries {queries.shape} and documents {documents.shape} differ"
    scores = unit(queries) @ unit(documents).T  # (n, n)
    np.fill_diagonal(scores, -np.inf)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (n, k), unordered
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1)


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def overlap_at_k(found: np.ndarray, reference: np.ndarray) -> float:
    """Mean over rows of |found ∩ reference| / k for index arrays `(n, k)`."""
    hits = [len(np.intersect1d(row, ref, assume_unique=True)) for row, ref in zip(found, reference, strict=True)]
    return float(np.mean(hits) / reference.shape[1])


def index_compatibility(new: np.ndarray, old: np.ndarray, k: int = K, threshold: float = REEMBED_BELOW) -> dict:
    """Recall@k of new queries in an old index and of the old encoder on both sides, each against the new encoder
    on both sides (`new`, `old`: `(n, H)` vectors of the same n distinct texts, n > k), with the advice."""
    count = len(new)
    assert count > k, f"{count} texts: need more than k={k} for k nearest other texts"
    reference = nearest(new, new, k)
    cross = overlap_at_k(nearest(new, old, k), reference)
    same = overlap_at_k(nearest(old, old, k), reference)
    return {
        f"recall_at_{k}_new_query_old_index": round(cross, 4),
        f"recall_at_{k}_same_encoder": round(same, 4),
        "texts": count,
        "chance": round(k / (count - 1), 4),  # the recall of random neighbours: small validation sets read high
        "threshold": threshold,
        "advice": "re-embed stored vectors" if cross < threshold else "stored vectors remain usable",
    }


def sample_texts(files: list[str], columns: list[str], limit: int, seed: int = 0) -> list[str]:
    """Up to `limit` distinct non-empty texts from the named string columns of Parquet `files` (a column a file
    lacks is passed over), a seeded sample when there are more."""
    texts: dict[str, None] = {}
    for path in files:
        present = [name for name in columns if name in pq.read_schema(path).names]
        table = pq.read_table(path, columns=present)
        for name in present:
            texts.update(dict.fromkeys(text for text in table.column(name).to_pylist() if text and text.strip()))
    distinct = list(texts)
    if len(distinct) <= limit:
        return distinct
    chosen = np.random.default_rng(seed).choice(len(distinct), size=limit, replace=False)
    return [distinct[i] for i in sorted(chosen)]


def compatibility_line(result: dict) -> str:
    """The one line the training report prints."""
    if "skipped" in result:
        return f"index compatibility: skipped ({result['skipped']})"
    return (
        f"index compatibility ({result['texts']} texts): recall@{K} new queries vs the starting encoder's index "
        f"{result[f'recall_at_{K}_new_query_old_index']:.3f}, starting encoder on both sides "
        f"{result[f'recall_at_{K}_same_encoder']:.3f} (reference: new encoder on both sides; chance "
        f"{result['chance']:.3f}) -> {result['advice']}"
    )
