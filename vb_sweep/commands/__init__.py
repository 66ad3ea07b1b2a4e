"""The sweep commands behind ``vb-sweep ablation`` and ``vb-sweep search`` (and the scripts in
experiments/ that call them)."""
