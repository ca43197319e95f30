"""tuner: tune transformer sentence-ordering models with Optuna and PyTorch Lightning."""

__version__ = "0.1.0"
