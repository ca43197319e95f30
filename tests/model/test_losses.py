"""The ranking losses, checked against per-document reference implementations."""

from __future__ import annotations

import math

import pytest
import torch

from tuner.keys import LOSSES as CONFIG_LOSSES
from tuner.model.losses import LOSSES, list_mle, pairwise_logistic, position_mse


def _padded() -> tuple[torch.Tensor, torch.Tensor]:
    gold = torch.tensor([[1, 0, 2, 0, 0], [3, 1, 0, 2, 4]])
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    return gold, mask


def test_every_configurable_loss_exists() -> None:
    assert set(CONFIG_LOSSES) == set(LOSSES)


def test_pairwise_starts_at_ln2_for_equal_scores() -> None:
    gold, mask = _padded()
    assert pairwise_logistic(torch.zeros(2, 5), gold, mask).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_right_order_scores_lower_than_reversed(loss: str) -> None:
    gold, mask = _padded()
    right = gold.float()
    wrong = -gold.float() * 3
    fn = LOSSES[loss]
    assert fn(right / 4, gold, mask) < fn(wrong, gold, mask)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_padding_does_not_change_the_loss(loss: str) -> None:
    gold, mask = _padded()
    scores = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    fn = LOSSES[loss]
    changed = scores.clone()
    changed[0, 3:] = 1e4
    assert fn(scores, gold, mask).item() == pytest.approx(fn(changed, gold, mask).item())
    # one document alone gives the same per-document value as in the batch
    single = fn(scores[1:], gold[1:], mask[1:])
    both = fn(scores, gold, mask)
    first = fn(scores[:1, :3], gold[:1, :3], mask[:1, :3])
    assert both.item() == pytest.approx((single.item() + first.item()) / 2, rel=1e-5)


def _list_mle_loop(scores: list[float], gold: list[int]) -> float:
    order = sorted(range(len(gold)), key=lambda i: gold[i])
    utilities = [-scores[i] for i in order]
    total = 0.0
    for k in range(len(utilities)):
        total += math.log(sum(math.exp(u) for u in utilities[k:])) - utilities[k]
    return total / len(utilities)


def test_list_mle_matches_a_direct_computation() -> None:
    gold, mask = _padded()
    scores = torch.randn(2, 5, generator=torch.Generator().manual_seed(1))
    expected = (_list_mle_loop(scores[0, :3].tolist(), gold[0, :3].tolist())
                + _list_mle_loop(scores[1].tolist(), gold[1].tolist())) / 2
    assert list_mle(scores, gold, mask).item() == pytest.approx(expected, rel=1e-5)


def test_mse_regresses_normalised_positions() -> None:
    gold, mask = _padded()
    target = torch.tensor([[0.5, 0.0, 1.0, 0, 0], [0.75, 0.25, 0.0, 0.5, 1.0]])
    assert position_mse(target, gold, mask).item() == pytest.approx(0.0)


def test_losses_have_gradients_through_masked_batches() -> None:
    gold, mask = _padded()
    for fn in LOSSES.values():
        scores = torch.randn(2, 5, requires_grad=True)
        fn(scores, gold, mask).backward()
        assert scores.grad is not None and torch.isfinite(scores.grad).all()
        assert scores.grad[0, 3:].abs().sum() == 0
