"""The ``vb-sweep`` command: sweeps on Ray Tune, one trial without Ray, the trigger gallery.

commands:
    vb-sweep ablation ...      the paper's Table 4 as a sweep (vb-sweep ablation --help)
    vb-sweep search ...        Optuna over one cell's thresholds t_f, t_m (vb-sweep search --help)
    vb-sweep run ...           one trial in this process, no Ray (vb-sweep run --help)
    vb-sweep show-attacks ...  every attack's trigger on test images, as one PNG

examples:
    vb-sweep ablation --preset smoke
    vb-sweep search --attack badnets --n-trials 20
    vb-sweep run --preset smoke --attack blend --defense vab --set t_m=0.3
    vb-sweep show-attacks --out attacks.png

Bad input ends with one line naming the field and the allowed values, exit status 2, before any
data is loaded or any cluster starts, and nothing is written.
"""

from __future__ import annotations

import importlib
import sys

# Command name -> the module in vb_sweep/commands/ whose main(argv, prog) runs it.
COMMANDS = {"ablation": "ablation", "search": "search", "run": "run",
            "show-attacks": "show_attacks"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.replace("``", "").strip())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"vb-sweep: error: invalid command: {argv[0]!r} (allowed: "
              f"{', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    command = importlib.import_module(f"vb_sweep.commands.{COMMANDS[argv[0]]}")
    return command.main(argv[1:], prog=f"vb-sweep {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
