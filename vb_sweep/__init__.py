"""vb-sweep: experiment sweeps for the V&B backdoor defense (ICCV 2023)."""

__version__ = "0.1.0"
