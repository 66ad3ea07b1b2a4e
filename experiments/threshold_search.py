"""``vb-sweep search`` from a checkout: Optuna over one cell's thresholds (t_f, t_m).

    python experiments/threshold_search.py --attack badnets --n-trials 20
    python experiments/threshold_search.py --help

The command lives in ``vb_sweep.commands.search``; this script takes the same options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package, from a checkout

from vb_sweep.commands.search import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="threshold_search.py"))
