"""Rows in: the Parquet contract and its validation, source preparation, task sampling, tokenisation, Ray Datasets."""

from mtl.data.contract import DataError, RowReport, read_validated

__all__ = ["DataError", "RowReport", "read_validated"]
