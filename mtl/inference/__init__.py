"""Everything that reads or writes an export: `ExportedModel` and the output maths the Serve deployments share."""

from mtl.inference.exported_model import ExportedModel as ExportedModel
from mtl.inference.exported_model import head_path as head_path
from mtl.inference.exported_model import head_probabilities as head_probabilities
from mtl.inference.exported_model import label_entries as label_entries
from mtl.inference.exported_model import load_task_head as load_task_head
from mtl.inference.exported_model import model_info as model_info
from mtl.inference.exported_model import normalize_rows as normalize_rows
from mtl.inference.exported_model import pair_cosine as pair_cosine
from mtl.inference.exported_model import read_manifest as read_manifest
from mtl.inference.exported_model import select_tasks as select_tasks
