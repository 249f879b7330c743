"""dfp: deepfake-detector training on imbalanced data (shards, loaders, trainer, thresholds, reports)."""
__version__ = "0.1.0"
