"""Everything that reads or writes an export: `ExportedModel` and the output maths the Serve deployments share."""

from mtl.inference.exported_model import (
    ExportedModel,
    head_probabilities,
    label_entries,
    load_task_head,
    model_info,
    normalize_rows,
    pair_cosine,
    read_manifest,
)

__all__ = [
    "ExportedModel",
    "head_probabilities",
    "label_entries",
    "load_task_head",
    "model_info",
    "normalize_rows",
    "pair_cosine",
    "read_manifest",
]
