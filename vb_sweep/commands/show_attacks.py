"""``vb-sweep show-attacks``: every attack's trigger on the same test images, as one PNG.

    vb-sweep show-attacks --attacks badnets blend --out attacks.png

Attacks that train (Dynamic, CL) train first, on the chosen preset's budget.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from vb_sweep.commands.options import OneLineErrorParser, run_command
from vb_sweep.errors import ConfigError

PROG = "vb-sweep show-attacks"


def show_attacks(args) -> int:
    from vb_sweep.attacks import ATTACKS, build_attack
    from vb_sweep.attacks.budgets import attack_budget
    from vb_sweep.cache import ArtifactCache
    from vb_sweep.config import PRESETS
    from vb_sweep.data import load_dataset
    from vb_sweep.errors import check_choice, check_file, check_folder
    from vb_sweep.gallery import render_attack_gallery

    check_choice("--preset", args.preset, PRESETS)
    names = args.attacks or ATTACKS.names()
    attacks = [build_attack(name, preset=args.attack_preset,
                            **attack_budget(args.preset, name)) for name in names]
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".svg"):
        raise ConfigError("--out", str(out), "a .png file, or .svg (written with a .png beside "
                          "it)")
    check_file("--out", out)
    if args.cache_dir:
        check_folder("--cache-dir", args.cache_dir)
    data = load_dataset(args.dataset, args.data_root)
    cache = ArtifactCache(args.cache_dir) if args.cache_dir else None
    for attack in attacks:
        attack.check_target(data.train.num_classes)
    trained = [attack for attack in attacks if attack.requires_training]
    for number, attack in enumerate(trained, 1):  # minutes each: say what is going on
        print(f"[{number}/{len(trained)}] preparing {attack.name} (it trains before it can "
              "poison)...", flush=True)
        started = time.perf_counter()
        attack.prepare(data.train, cache=cache)
        print(f"[{number}/{len(trained)}] {attack.name} ready in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    render_attack_gallery(data.test, attacks, out)
    print(f"gallery of {', '.join(names)} written to {out}")
    return 0


def build_parser(prog: str = PROG) -> OneLineErrorParser:
    parser = OneLineErrorParser(prog=prog, description="Every attack's trigger on the same test "
                                "images, as one PNG (trained attacks train first).",
                                epilog="example: vb-sweep show-attacks --attacks badnets blend "
                                       "--out attacks.png")
    parser.add_argument("--dataset", default="synthetic", help="default synthetic")
    parser.add_argument("--data-root", default=None, help="dataset folder (cifar10, gtsrb)")
    parser.add_argument("--attacks", nargs="*", default=None, help="default: every attack")
    parser.add_argument("--attack-preset", default="vab_paper",
                        help="vab_paper | backdoorbench")
    parser.add_argument("--preset", default="smoke",
                        help="run preset whose training budget the trained attacks use")
    parser.add_argument("--cache-dir", default=None, help="where trained attacks are kept")
    parser.add_argument("--out", default="attacks.png",
                        help="the PNG (default attacks.png; .svg writes a PNG beside it)")
    return parser


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    return run_command(build_parser(prog), show_attacks, argv)


if __name__ == "__main__":
    sys.exit(main())
