"""Everything that reads or writes an export: `ExportedModel` and the output maths the Serve deployments share.

Names are loaded on first use, so `import mtl.inference.batch` (a batch job's driver) does not pay for torch.
"""

import importlib

_EXPORTS = {
    "ExportedModel": "exported_model",
    "head_probabilities": "exported_model",
    "label_entries": "exported_model",
    "load_task_head": "exported_model",
    "normalize_rows": "exported_model",
    "pair_cosine": "exported_model",
    "head_path": "manifest",
    "model_info": "manifest",
    "read_manifest": "manifest",
    "select_tasks": "manifest",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mtl.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mtl.inference.{_EXPORTS[name]}"), name)
