"""The stages, one module each: search, retrain, export, report, baselines, pipeline."""
