"""Kendall's tau, PMR and positional accuracy on padded batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from tuner.model.metrics import kendall_tau, ordering_metrics, perfect_match, positional_accuracy, positions


def _batch(perms: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in perms)
    predicted = torch.zeros(len(perms), width, dtype=torch.long)
    gold = torch.zeros(len(perms), width, dtype=torch.long)
    mask = torch.zeros(len(perms), width, dtype=torch.bool)
    for row, perm in enumerate(perms):
        predicted[row, : len(perm)] = torch.as_tensor(perm)
        gold[row, : len(perm)] = torch.arange(len(perm))
        mask[row, : len(perm)] = True
    return predicted, gold, mask


@pytest.mark.parametrize("sizes", [[2] * 50, [16] * 30, list(range(2, 17)) * 4])
def test_kendall_tau_matches_scipy_on_random_permutations(sizes: list[int]) -> None:
    rng = np.random.default_rng(0)
    perms = [rng.permutation(n) for n in sizes]
    predicted, gold, mask = _batch(perms)
    ours = kendall_tau(predicted, gold, mask).numpy()
    expected = [kendalltau(p, np.arange(len(p))).statistic for p in perms]
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_tau_extremes_pmr_and_accuracy() -> None:
    identity, reverse = np.arange(5), np.arange(5)[::-1].copy()
    swap_first = np.array([1, 0, 2, 3])
    predicted, gold, mask = _batch([identity, reverse, swap_first])
    assert kendall_tau(predicted, gold, mask).tolist() == pytest.approx([1.0, -1.0, (5 - 1) / 6])
    assert perfect_match(predicted, gold, mask).tolist() == [1.0, 0.0, 0.0]
    # reverse of 5 keeps the middle sentence in place; the swap keeps 2 of 4
    assert positional_accuracy(predicted, gold, mask).tolist() == pytest.approx([1.0, 0.2, 0.5])


def test_positions_rank_scores_ascending_and_ignore_padding() -> None:
    scores = torch.tensor([[0.3, -1.0, 2.0, 99.0], [5.0, 1.0, -7.0, -8.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    pos = positions(scores, mask)
    assert pos[0, :3].tolist() == [1, 0, 2]
    assert pos[1, :2].tolist() == [1, 0]


def test_ordering_metrics_from_scores_are_padding_invariant() -> None:
    gold = torch.tensor([[2, 0, 1, 0]])
    mask = torch.tensor([[True, True, True, False]])
    scores = torch.tensor([[3.0, 1.0, 2.0, -50.0]])  # perfect for the real sentences
    metrics = ordering_metrics(scores, gold, mask)
    assert metrics["kendall_tau"].item() == pytest.approx(1.0)
    assert metrics["pmr"].item() == 1.0
    assert metrics["acc"].item() == 1.0
