"""The paper's Table 4 from results folders: ``python analysis/ablation_table.py --help``.

The code is ``vb_sweep.analysis.ablation_table`` (importable from the installed package).
"""

import sys

from vb_sweep.analysis.ablation_table import main

if __name__ == "__main__":
    sys.exit(main())
