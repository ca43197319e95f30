"""Training losses over a padded batch, all masked and vectorised (no per-document loop).

Scores follow one convention everywhere: a lower score means an earlier sentence, so the predicted
order sorts scores ascending. Each loss is averaged per document, then over documents.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from tuner.keys import LISTMLE, MSE, PAIRWISE


def _per_document(values: Tensor, mask: Tensor) -> Tensor:
    counts = mask.sum(dim=tuple(range(1, mask.dim()))).clamp(min=1)
    return ((values * mask).sum(dim=tuple(range(1, values.dim()))) / counts).mean()


def pairwise_logistic(scores: Tensor, gold: Tensor, mask: Tensor) -> Tensor:
    """RankNet-style loss: for every pair with ``gold_i < gold_j``, ``log(1 + exp(s_i - s_j))``.

    An untrained model that scores every sentence alike starts at ``ln 2``.
    """
    scores = scores.float()
    pairs = mask[:, :, None] & mask[:, None, :] & (gold[:, :, None] < gold[:, None, :])
    losses = F.softplus(scores[:, :, None] - scores[:, None, :])
    return _per_document(losses, pairs)


def list_mle(scores: Tensor, gold: Tensor, mask: Tensor) -> Tensor:
    """ListMLE: the negative Plackett-Luce log-likelihood of the gold order, per sentence."""
    utility = -scores.float()
    big = gold.new_full((), gold.shape[1])
    by_gold = torch.where(mask, gold, big).argsort(dim=1)
    sorted_utility = utility.gather(1, by_gold)
    sorted_mask = mask.gather(1, by_gold)
    sorted_utility = sorted_utility.masked_fill(~sorted_mask, float("-inf"))
    tail = torch.logcumsumexp(sorted_utility.flip(1), dim=1).flip(1)
    terms = torch.where(sorted_mask, tail - sorted_utility, torch.zeros_like(tail))
    return _per_document(terms, sorted_mask)


def position_mse(scores: Tensor, gold: Tensor, mask: Tensor) -> Tensor:
    """Regress each sentence's normalised gold position ``gold / (n - 1)`` in ``[0, 1]``."""
    n = mask.sum(dim=1, keepdim=True)
    target = gold.float() / (n - 1).clamp(min=1)
    return _per_document((scores.float() - target) ** 2, mask)


LOSSES: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    PAIRWISE: pairwise_logistic,
    LISTMLE: list_mle,
    MSE: position_mse,
}
