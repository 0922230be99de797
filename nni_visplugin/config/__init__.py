"""Every setting, validated where it enters: the typed, frozen configs of search, retraining and pipeline."""
