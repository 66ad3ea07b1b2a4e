"""Trials inside Ray Tune, in four parts a reader can take one at a time:

- ``worker``: what runs in a trial's worker process (the trainable, its reports, checkpoints and
  resuming);
- ``cluster``: starting or joining Ray, the resources each trial gets, building the shared
  artifacts once before the trials;
- ``recorder``: the driver's side of a running trial (MLflow runs, Parquet rows, progress lines);
- ``session``: one invocation of a sweep (checks, the MLflow parent run, the Tune run, the end).
"""

from vb_sweep.sweep.cluster import Resources, plan_resources, prepare_artifacts
from vb_sweep.sweep.recorder import TrialRecorder, trial_line
from vb_sweep.sweep.session import SessionOptions, SweepSession, grid_param_space
from vb_sweep.sweep.worker import (STATE_FILE, base_spec, fault_injection, latest_resumable,
                                   run_with_recovery, sweep_trial, trial_spec)

__all__ = ["Resources", "STATE_FILE", "SessionOptions", "SweepSession", "TrialRecorder",
           "base_spec", "fault_injection", "grid_param_space", "latest_resumable",
           "plan_resources", "prepare_artifacts", "trial_line", "run_with_recovery",
           "sweep_trial", "trial_spec"]
