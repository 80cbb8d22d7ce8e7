"""Thin shared layer for the fine-tuning recipes: config, data, metrics, training, assets."""

__version__ = "0.1.0"
