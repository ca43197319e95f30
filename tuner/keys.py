"""Names that several layers share: the attributes a trial or a study carries, and the default metric.

Each value has this one owner. Writers (the objective, the worker, the storage) and readers (the
report, the CLI) import it from here, so a report never needs the module that wrote an attribute.
"""

from __future__ import annotations

# The metric a study optimises unless its `[study] metric` says otherwise, and the metric names that
# training logs for each split (`val_kendall_tau`, `test_pmr`, ...).
OBJECTIVE = "val_kendall_tau"
METRICS = ("kendall_tau", "pmr", "acc", "loss")

# The losses a study may choose (`[model] loss`, `[search] loss`); tuner.model.losses implements each.
PAIRWISE, LISTMLE, MSE = "pairwise", "listmle", "mse"
LOSSES = (PAIRWISE, LISTMLE, MSE)

# Study user attributes
METRIC_ATTR = "metric"  # the metric the study optimises (`[study] metric`), fixed when it is created
FINDER_ATTR = "lr_finder:"  # prefix of cached LR-finder results, by backbone and batch size (scale mode)
TEST_ATTR = "test:"  # prefix of a trial's test metrics, set by `tuner evaluate --study`
# the study's heartbeat settings, fixed when it is created: {"heartbeat_interval": s, "grace_period": s};
# every worker and the storage proxy judge its trials stale by them (see tuner.storage.rdb.heartbeat_settings)
HEARTBEAT_ATTR = "heartbeat"

# Trial user attributes
FAIL_REASON_ATTR = "fail_reason"  # why a trial failed, in one line
# who runs the trial: the worker's label, its host and its process id (set by tuner.study.worker)
WORKER_ATTR, HOST_ATTR, PID_ATTR = "worker", "host", "pid"
RETRY_OF_ATTR = "retry_of"  # the number of the trial this one retries, set when a worker takes it up
BASELINE_ATTR = "baseline"  # the baseline trial, queued first (tuner.hpo.search.baseline_params)
STUDY_ERROR_ATTR = "study_error"  # a trial failed by an error of the study itself
NOT_ADMITTED_ATTR = "not_admitted"  # a trial created past the budget and failed before it ran
RANKS_ATTR = "ddp_ranks"  # one fingerprint per DDP rank

# Trial system attributes
TOKEN_ATTR = "tuner:create_token"  # names the storage call that created the trial (see tuner.storage.rdb)
REQUEST_ATTR = "tuner:create_request"  # a creation named by its caller (a proxy's client, the baseline); never stored
CLAIM_ATTR = "tuner:claim_token"  # names the storage call that took the queued trial up (WAITING to RUNNING)
# when the trial became RUNNING by the database's clock, in seconds since the epoch (see tuner.storage.rdb)
STARTED_ATTR = "tuner:started"
