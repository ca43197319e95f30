"""The LR finder's judge: a flat curve's suggestion is rejected."""

from __future__ import annotations

import math

from tuner.config.schema import LRFinderConfig
from tuner.hpo.lr_finder import judge_finder


def test_judge_finder_rejects_a_flat_curve() -> None:
    config = LRFinderConfig()
    lrs = [1e-6 * 10 ** (i / 20) for i in range(80)]
    flat = [0.69 + 0.001 * math.sin(i) for i in range(80)]
    assert judge_finder(lrs, flat, 8.6e-3, config)[0] is False
    dropping = [0.69 - 0.3 * min(i, 50) / 50 + (0.5 if i > 70 else 0) for i in range(80)]
    assert judge_finder(lrs, dropping, 1e-4, config) == (True, "loss dropped 37.2%")
    assert judge_finder(lrs, dropping, None, config)[0] is False
