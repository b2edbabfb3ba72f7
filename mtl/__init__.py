"""Multi-task sentence encoder. The packages follow the data path:

config.py     the typed config tree (YAML + --set overrides)
data/         Parquet contract and row validation, source preparation, task sampling, tokenisation, Ray Datasets
model/        backbone loading, pooling, task heads, the multi-task model, fine-tuning strategies
train/        the per-worker recipe, its sessions (Ray Train / one process), optimiser, losses, DeepSpeed config,
              validation, progress, the Ray driver and the run report
inference/    the export (writer) and ExportedModel (the one reader), the Ray Data batch job
evaluation/   metrics, STS-B Spearman, evaluating an export, plots
"""
