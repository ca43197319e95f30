"""The LightningModule: scores per sentence for every backbone family, checkpoints, precision, schedules."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import synthetic_documents, write_lines

from tuner.config.schema import BackboneSpec, DataConfig
from tuner.data.module import SentenceOrderingData
from tuner.errors import BackboneError
from tuner.model.orderer import SentenceOrderer


def _data(tmp_path: Path, backbone: str, n: int = 64) -> SentenceOrderingData:
    path = write_lines(tmp_path / "d.lower", synthetic_documents(n))
    module = SentenceOrderingData(DataConfig(path=str(path), separator=" <eos> ", split=(0.25, 0.25), batch_size=8),
                                  backbone)
    module.setup()
    return module


@pytest.mark.parametrize("which", ["tiny_bert", "tiny_roberta", "tiny_distilbert"])
def test_scores_one_value_per_sentence_for_each_backbone_family(
    tmp_path: Path, which: str, request: pytest.FixtureRequest
) -> None:
    backbone = request.getfixturevalue(which)
    data = _data(tmp_path, backbone)
    model = SentenceOrderer(backbone=backbone)
    batch = next(iter(data.val_dataloader()))
    scores = model.score(batch)
    assert scores.shape == batch["sentence_mask"].shape
    loss = model.loss_fn(scores, batch["gold"], batch["sentence_mask"])
    loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_scores_read_the_marker_or_the_mean_of_each_sentence(tiny_bert: str) -> None:
    ids = torch.tensor([[101, 2000, 2001, 101, 2002, 102]])
    markers, slots = torch.tensor([[0, 3]]), torch.tensor([[0, 0, 0, 1, 1, -1]])
    for pooling in ("marker", "mean"):
        model = SentenceOrderer(backbone=tiny_bert, pooling=pooling).eval()
        hidden = model.encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        if pooling == "marker":
            features = hidden[:, [0, 3]]
        else:
            features = torch.stack([hidden[:, 0:3].mean(1), hidden[:, 3:5].mean(1)], dim=1)
        scores = model(ids, torch.ones_like(ids), markers, slots)
        torch.testing.assert_close(scores, model.head(features).squeeze(-1))


def test_unknown_backbone_says_how_to_name_one(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="hub name.*local folder.*packaged one: sentence-transformers"):
        SentenceOrderer(backbone=str(tmp_path / "no-such-model" / "x"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="has no config.json"):
        SentenceOrderer(backbone=str(tmp_path / "empty"))


def test_config_overrides_trim_the_packaged_minilm() -> None:
    model = SentenceOrderer(backbone={"name": "sentence-transformers/all-MiniLM-L6-v2",
                                      "config": {"num_hidden_layers": 2}})
    assert len(model.encoder.encoder.layer) == 2
    assert model.training and model.encoder.training  # from_pretrained() leaves eval mode; we train
    assert model.spec == BackboneSpec("sentence-transformers/all-MiniLM-L6-v2", {"num_hidden_layers": 2})


def test_checkpoint_rebuilds_the_same_model_without_pretrained_weights(tmp_path: Path, tiny_roberta: str) -> None:
    data = _data(tmp_path, tiny_roberta)
    model = SentenceOrderer(backbone=tiny_roberta, loss="listmle", learning_rate=3e-4)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu",
                         logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=data)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    restored = SentenceOrderer.load_from_checkpoint(path, map_location="cpu").eval()
    assert restored.hparams.loss == "listmle" and restored.learning_rate == 3e-4
    assert restored.hparams.pretrained is False
    batch = next(iter(data.val_dataloader()))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored.score(batch),
                                   model.score(batch))


def test_bf16_mixed_trains_on_cpu_and_warmup_then_linear_decay(tmp_path: Path, tiny_bert: str) -> None:
    data = _data(tmp_path, tiny_bert, n=96)
    model = SentenceOrderer(backbone=tiny_bert, learning_rate=1e-3, warmup=0.25)
    rates: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = pl.Trainer(max_epochs=2, precision="bf16-mixed", accelerator="cpu", logger=False,
                         enable_progress_bar=False, callbacks=[Record()], default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=data)
    assert torch.isfinite(trainer.callback_metrics["val_loss"])
    assert "val_kendall_tau" in trainer.callback_metrics and "val_pmr" in trainer.callback_metrics
    peak = rates.index(max(rates))
    assert 0 < peak < len(rates) - 1
    assert rates[:peak + 1] == sorted(rates[:peak + 1]) and rates[peak:] == sorted(rates[peak:], reverse=True)
    assert max(rates) == pytest.approx(1e-3, rel=0.2) and rates[-1] < 0.2 * max(rates)


def test_learning_rate_is_an_attribute_the_lr_finder_can_set(tmp_path: Path, tiny_bert: str) -> None:
    from lightning.pytorch.tuner import Tuner

    data = _data(tmp_path, tiny_bert, n=400)
    model = SentenceOrderer(backbone=tiny_bert, learning_rate=1e-5)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                         default_root_dir=str(tmp_path))
    finder = Tuner(trainer).lr_find(model, datamodule=data, num_training=20, min_lr=1e-4, max_lr=1e-2,
                                    early_stop_threshold=None)
    assert finder is not None and len(finder.results["lr"]) == 20
    assert finder.suggestion() is not None
    assert model.learning_rate == finder.suggestion() != 1e-5
