"""Figures from a results folder: ``python analysis/plots.py --help``.

The code is ``vb_sweep.analysis.plots`` (importable from the installed package).
"""

import sys

from vb_sweep.analysis.plots import main

if __name__ == "__main__":
    sys.exit(main())
