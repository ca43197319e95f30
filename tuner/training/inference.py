"""Using a checkpoint: evaluate it on a split or a file, and order a document's sentences."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tuner import hardware
from tuner.config.loader import data_config
from tuner.config.schema import TrainerConfig
from tuner.data.batching import collate
from tuner.data.encoding import encode_documents
from tuner.data.module import SentenceOrderingData
from tuner.data.splits import Document
from tuner.errors import TunerError, first_line, require_file
from tuner.model.orderer import SentenceOrderer
from tuner.training.trainer import build_trainer, split_metrics

log = logging.getLogger(__name__)


def load_checkpoint(path: str | Path, data_overrides: Mapping[str, Any] | None = None
                    ) -> tuple[SentenceOrderer, SentenceOrderingData]:
    """The model and its data module, rebuilt from a checkpoint alone (no pretrained download)."""
    path = Path(path)
    require_file(path, "checkpoint")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=False)
    except OSError as err:
        raise TunerError(f"checkpoint {path} cannot be read: {err.strerror or err}") from None
    except Exception as err:  # noqa: BLE001 - unpickling a file that is not a checkpoint raises almost anything
        raise TunerError(f"checkpoint {path} is not a tuner checkpoint: "
                         f"{first_line(err, type(err).__name__)}") from None
    model_hparams = stored.get("hyper_parameters") if isinstance(stored, Mapping) else None
    if not isinstance(model_hparams, Mapping) or "backbone_config" not in model_hparams or "state_dict" not in stored:
        raise TunerError(f"checkpoint {path} is not a tuner checkpoint: it holds no model written by tuner train "
                         "or tuner run")
    try:
        model = SentenceOrderer.load_from_checkpoint(path, map_location="cpu")
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise TunerError(f"checkpoint {path} cannot be loaded: {first_line(err, type(err).__name__)}") from None
    hparams = stored.get("datamodule_hyper_parameters") or {}
    values = dict(hparams.get("data", {}))
    values.update(data_overrides or {})
    data = SentenceOrderingData(data_config(values), hparams.get("backbone_name", model.spec.name))
    model.eval()
    return model, data


def evaluate_checkpoint(
    checkpoint: str | Path,
    split: str = "test",
    files: Sequence[str | Path] = (),
    data_overrides: Mapping[str, Any] | None = None,
    trainer: TrainerConfig | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of a checkpoint on a split of its study's data, or on each of ``files``. Nothing is recorded
    anywhere: :func:`tuner.study.queries.evaluate` (``tuner evaluate``) records a study's test metrics.

    Returns ``{name: {"kendall_tau": ..., "pmr": ..., "acc": ..., "loss": ..., "documents": n}}``.
    """
    model, data = load_checkpoint(checkpoint, data_overrides)
    # the precision that is best here ("auto"), not the training machine's: bf16 emulated on a CPU
    # without it is many times slower, and mixed-precision weights are kept in fp32 anyway
    tester = build_trainer(trainer or TrainerConfig(), Path(checkpoint).parent, logger=False, progress=False)
    targets: dict[str, Any] = {}
    if files:
        for file in files:
            targets[str(file)] = data.documents_from_file(file, split="test")
    else:
        if split not in ("train", "validation", "test"):
            raise TunerError(f"unknown split {split!r}; use train, validation or test")
        data.setup("test")
        if not data.datasets.get(split):
            raise TunerError(f"the study's data has no {split} split")
        targets[split] = data.datasets[split] if split != "train" else data.make_dataset(
            data.datasets["train"].documents, "validation")
    results = {}
    for name, dataset in targets.items():
        values = tester.test(model, dataloaders=data.loader(dataset), verbose=False)[0]
        results[name] = {**split_metrics(values, "test"), "documents": len(dataset)}
    return results


def order_sentences(checkpoint: str | Path, sentences: Document) -> list[str]:
    """The sentences in the order the model predicts."""
    model, data = load_checkpoint(checkpoint)  # even for one sentence: a bad checkpoint is an error
    if len(sentences) < 2:
        return list(sentences)
    if 2 * len(sentences) + 1 > data.max_length:
        raise TunerError(f"{len(sentences)} sentences do not fit in the model's {data.max_length} tokens")
    dataset = data.make_dataset(encode_documents([sentences], data.tokenizer, data.max_length), "predict")
    item = dataset[0]
    batch = collate([item], data.pad_id)
    bf16 = hardware.best_precision("cpu") == "bf16-mixed"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        scores = model.score(batch)[0].float()
    slots = scores.argsort(stable=True).tolist()
    return [sentences[item["gold"][slot]] for slot in slots]
