"""Evaluation: classification metrics (scikit-learn), STS-B Spearman, evaluating an export, plots."""
