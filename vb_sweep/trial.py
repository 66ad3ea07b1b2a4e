"""One trial end to end, with no knowledge of Ray, MLflow or Parquet.

    result = run_trial(config, cache=ArtifactCache(dir), trial_id="abc", sweep="demo",
                       on_epoch=print, checkpoint=None, save_checkpoint=None)
    result.row       # dict with TRIAL_SCHEMA columns (mlflow_run_id left None)
    result.history   # list of dicts with HISTORY_SCHEMA columns
    result.figures   # {"entropy_histogram.png": bytes, "trigger_preview.png": bytes}

``on_epoch(record)`` is called with each history record as soon as it exists (progress, Tune
reports, MLflow metrics). ``save_checkpoint(state)`` is called at every epoch end with a
picklable dict; passing that dict back as ``checkpoint=`` resumes the trial after that epoch.
``prepare_poisoned_set(config, cache)`` and ``prepare_victim(config, cache)`` fill the caches a
sweep shares between trials before any trial starts.
"""

# Implementation lands with the defense engine.
