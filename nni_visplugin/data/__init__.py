"""Datasets into train / validation (/ test) splits, loaders and augmentation."""
