"""The commands of ``vb-sweep`` (see vb_sweep/cli.py), one module each: ``ablation``,
``search``, ``run`` and ``show_attacks``, each with ``build_parser(prog)`` and
``main(argv, prog)``; ``options`` holds what they share. The scripts in experiments/ call
``ablation`` and ``search``."""
