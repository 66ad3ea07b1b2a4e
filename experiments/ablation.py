"""``vb-sweep ablation`` from a checkout: the paper's Table 4 as a Ray Tune sweep.

    python experiments/ablation.py --preset smoke
    python experiments/ablation.py --help

The command lives in ``vb_sweep.commands.ablation``; this script takes the same options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package, from a checkout

from vb_sweep.commands.ablation import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="ablation.py"))
