"""One training run: the Lightning trainer, stopping on a signal, DDP inside a trial, and inference."""
