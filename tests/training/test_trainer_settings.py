"""The trainer settings tuner decides for the user: how often a trial validates."""

from __future__ import annotations

import pytest

from tuner.config.schema import TrainerConfig
from tuner.training.trainer import validation_interval


@pytest.mark.parametrize(
    ("batches", "interval"),
    [(None, 1.0), (5, 1.0), (19, 1.0), (20, 0.5), (39, 1 / 3), (40, 0.25), (1000, 0.25)],
)
def test_auto_validates_up_to_four_times_an_epoch_ten_batches_apart(batches: int | None, interval: float) -> None:
    assert validation_interval("auto", batches) == pytest.approx(interval)


def test_a_number_is_lightnings_own() -> None:
    assert TrainerConfig().val_check_interval == 1.0  # once an epoch unless the study file asks
    assert validation_interval(0.5, 1000) == 0.5
    assert validation_interval(1.0, 10) == 1.0
