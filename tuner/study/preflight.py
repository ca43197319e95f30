"""The pre-flight check: before a study's first trial, prove that the study can work at all.

A study that cannot work (a data file missing or not UTF-8, an unknown column, a backbone that does not
exist, a ``study.metric`` the model never logs) would otherwise fail every trial the same way, and
every failure would spend the budget. The check costs seconds and creates nothing:

1. It reads every split with the data module's own readers (:func:`tuner.data.readers.load_documents`).
2. It resolves every backbone the study may use (``[search].backbone``, else ``[model].backbone``):
   its config and tokenizer, not its weights (:func:`tuner.backbone.check`), and the data settings
   against its tokenizer.
3. It runs one validation step of the first backbone, built from its config (random weights: nothing
   is downloaded), on two validation documents, and reads which metrics the model logs.

:func:`tuner.study.run.run_study` and :func:`tuner.study.pool.run_workers` run it before they open the study.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tuner import backbone
from tuner.config.schema import BackboneSpec, StudyFile
from tuner.data.encoding import encode_documents
from tuner.data.module import SentenceOrderingData
from tuner.data.readers import load_documents
from tuner.data.splits import Document
from tuner.errors import ConfigError, PreflightError, TunerError, first_line
from tuner.model.orderer import SentenceOrderer
from tuner.training.distributed import one_device
from tuner.training.trainer import build_trainer

log = logging.getLogger(__name__)


DOCUMENTS = 2  # validation documents in the one validation step


@dataclass(frozen=True)
class Preflight:
    """What the check found: documents per split, the backbones' labels, the metrics validation logs."""

    documents: dict[str, int]
    backbones: tuple[str, ...]
    metrics: tuple[str, ...]
    seconds: float


def backbones(run: StudyFile) -> list[tuple[str, BackboneSpec]]:
    """Every backbone a trial may use, with the study key that names it."""
    if run.search.backbone:
        return [(f"search.backbone[{i}]", spec) for i, spec in enumerate(run.search.backbone)]
    return [("model.backbone", run.model.backbone)]


def check(run: StudyFile) -> Preflight:
    """Check that ``run``'s study can work; raise a :class:`tuner.errors.TunerError` naming what to fix.

    Raises:
        DataError: a data file is missing, unreadable, not UTF-8, or lacks a column; a split is empty;
            ``data.max_length`` cannot hold ``data.max_sentences`` with a backbone's tokenizer.
        BackboneError: a backbone cannot be found or loaded.
        ConfigError: the model never logs ``study.metric``.
        PreflightError: the validation step failed in another way.
    """
    started = time.perf_counter()
    where = run.source or run.name
    documents = load_documents(run.data)
    specs = backbones(run)
    for key, spec in specs:
        try:
            backbone.check(spec)
            SentenceOrderingData(run.data, spec.name)  # the tokenizer against data.max_length
        except TunerError as err:
            raise type(err)(f"{where}: {key}: {err}") from None
    metrics = _validation_metrics(run, specs[0][1], documents["validation"][:DOCUMENTS])
    if run.study.metric not in metrics:
        raise ConfigError(f"{where}: study.metric: the model never logs {run.study.metric!r}; it logs "
                          f"{', '.join(metrics)}")
    result = Preflight({name: len(docs) for name, docs in documents.items()}, tuple(s.label for _, s in specs),
                       metrics, time.perf_counter() - started)
    log.debug("pre-flight check passed in %.2f s: %s documents, backbones %s, validation logs %s",
              result.seconds, result.documents, ", ".join(result.backbones), ", ".join(result.metrics))
    return result


def _validation_metrics(run: StudyFile, spec: BackboneSpec, documents: list[Document]) -> tuple[str, ...]:
    """The metrics one validation step of ``spec`` logs on ``documents``, in one batch."""
    data = SentenceOrderingData(replace(run.data, batch_size=len(documents)), spec.name)
    batches = data.loader(data.make_dataset(encode_documents(documents, data.tokenizer, data.max_length),
                                            "validation"))
    model = SentenceOrderer(backbone=spec.to_dict(), loss=run.model.loss, pooling=run.model.pooling,
                            dropout=run.model.dropout, pretrained=False)
    config = replace(one_device(run.trainer), limit_val_batches=1.0)  # the one batch, whatever the study says
    try:
        with tempfile.TemporaryDirectory(prefix="tuner-preflight-") as root:
            trainer = build_trainer(config, Path(root), logger=False, progress=False)
            logged = trainer.validate(model, dataloaders=batches, verbose=False)
    except Exception as err:  # noqa: BLE001 - whatever it is, every trial would meet it
        raise PreflightError(f"{run.source or run.name}: a validation step of {spec.label} failed: "
                             f"{type(err).__name__}: {first_line(err)}") from None
    return tuple(sorted(logged[0])) if logged else ()
