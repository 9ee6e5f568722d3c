"""Hyperparameter search for compressing BERT token-classification (NER) models with Ray Tune and Optuna."""

__version__ = "0.1.0"
