"""Parquet results -> tables (``tables``), the paper's findings (``findings``) and figures
(``plots``); ``ablation_table`` and ``plots`` hold the command lines that analysis/ablation_table.py
and analysis/plots.py run."""
