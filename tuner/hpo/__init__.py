"""One Optuna trial: the search space, the objective, the pruning callback and the judged LR finder."""
