"""Sentence-ordering metrics, vectorised over a padded batch of documents.

Every function takes ``[batch, sentences]`` tensors and a boolean ``mask`` of the real sentences and
returns one value per document; data-set figures are the mean over documents.

Kendall's tau is tau-a, ``(concordant - discordant) / (n (n - 1) / 2)``. Predicted positions come from
a stable sort and gold positions are a permutation, so neither side has ties and tau-a equals tau-b
(what ``scipy.stats.kendalltau`` computes).
"""

from __future__ import annotations

import torch
from torch import Tensor


def positions(scores: Tensor, mask: Tensor) -> Tensor:
    """Predicted position of each sentence: its rank when sorting scores ascending.

    Padding sorts last, so real sentences get positions ``0 .. n-1``.
    """
    filled = scores.float().masked_fill(~mask, float("inf"))
    order = filled.argsort(dim=1, stable=True)
    return order.argsort(dim=1)


def kendall_tau(predicted: Tensor, gold: Tensor, mask: Tensor) -> Tensor:
    """Kendall's tau (tau-a) between predicted and gold positions, per document."""
    pair = mask[:, :, None] & mask[:, None, :]
    pair = pair & torch.ones_like(pair).triu(diagonal=1)
    agree = torch.sign(predicted[:, :, None] - predicted[:, None, :]) * torch.sign(gold[:, :, None] - gold[:, None, :])
    n = mask.sum(dim=1)
    n_pairs = (n * (n - 1) / 2).clamp(min=1)
    return (agree * pair).sum(dim=(1, 2)) / n_pairs


def perfect_match(predicted: Tensor, gold: Tensor, mask: Tensor) -> Tensor:
    """PMR: 1.0 where the whole document is in the right order, else 0.0."""
    return ((predicted == gold) | ~mask).all(dim=1).float()


def positional_accuracy(predicted: Tensor, gold: Tensor, mask: Tensor) -> Tensor:
    """Fraction of a document's sentences put at their exact gold position."""
    hits = ((predicted == gold) & mask).sum(dim=1).float()
    return hits / mask.sum(dim=1).clamp(min=1)


def ordering_metrics(scores: Tensor, gold: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """All three metrics per document, keyed as they are logged (``kendall_tau``, ``pmr``, ``acc``)."""
    predicted = positions(scores, mask)
    return {
        "kendall_tau": kendall_tau(predicted, gold, mask),
        "pmr": perfect_match(predicted, gold, mask),
        "acc": positional_accuracy(predicted, gold, mask),
    }
