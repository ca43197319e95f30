"""tuner: hyperparameter optimisation of sentence-ordering models with Optuna and PyTorch Lightning.

The library API, importable from here (each loads its module on first use, so ``import tuner`` stays
cheap and ``tuner.write_report`` never imports torch)::

    from tuner import load_study_file, run_study, trials, train, evaluate, order_sentences
    from tuner import write_report, serve
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_study_file": "tuner.study.open",
    "run_study": "tuner.study.run",
    "run_workers": "tuner.study.pool",
    "trials": "tuner.study.queries",
    "best": "tuner.study.queries",
    "train": "tuner.training.trainer",
    "evaluate": "tuner.study.queries",
    "order_sentences": "tuner.training.inference",
    "write_report": "tuner.report.page",
    "serve": "tuner.dashboard",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'tuner' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
