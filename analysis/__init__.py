"""Parquet results -> tables (``analysis.tables``) and figures (``analysis.plots``)."""
