"""Everything that runs an export: `ExportedModel` and the output maths the Serve deployments share (the export's
file format itself is `mtl.export_format`, below the model).

Names are loaded on first use, so `import mtl.inference.batch` (a batch job's driver) does not pay for torch.
"""

import importlib

_EXPORTS = {
    "ExportedModel": "mtl.inference.exported_model",
    "head_probabilities": "mtl.inference.exported_model",
    "label_entries": "mtl.inference.exported_model",
    "load_task_head": "mtl.inference.exported_model",
    "normalize_rows": "mtl.inference.exported_model",
    "pair_cosine": "mtl.inference.exported_model",
    "head_path": "mtl.export_format",
    "model_info": "mtl.export_format",
    "read_manifest": "mtl.export_format",
    "select_tasks": "mtl.export_format",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mtl.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
