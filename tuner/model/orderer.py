"""The sentence-ordering LightningModule: an encoder, a score per sentence marker, a ranking loss."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from tuner import backbone as backbones
from tuner.config.loader import parse_backbone
from tuner.config.schema import MINILM, BackboneSpec, ModelConfig
from tuner.keys import PAIRWISE
from tuner.model.losses import LOSSES
from tuner.model.metrics import ordering_metrics


class SentenceOrderer(pl.LightningModule):
    """Scores each sentence's marker token; sorting the scores ascending gives the predicted order.

    Args:
        backbone: hub name, local path or ``{name, config}`` table of the encoder.
        loss: ``pairwise`` (logistic over sentence pairs), ``listmle`` or ``mse`` (normalised position).
        learning_rate: peak AdamW learning rate; an attribute so Lightning's LR finder can set it.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm weights).
        warmup: fraction of the training steps with a linear warm-up.
        schedule: ``linear`` decay to zero after warm-up, or ``constant``.
        dropout: dropout before the scoring head.
        pooling: what the head scores for each sentence: ``marker``, the marker token's hidden state
            alone, or ``mean`` (default), the mean over the marker and its sentence's tokens. Mean
            pooling leaves the ln 2 plateau of the pairwise loss within tens of steps where marker
            pooling stays on it for hundreds (MiniLM on NIPS; see docs/study-files.md).
        pretrained: load pretrained weights; ``False`` rebuilds the architecture from
            ``backbone_config`` alone (used when loading a checkpoint, which holds the weights).
        backbone_config: the encoder's config as a dict, stored so a checkpoint rebuilds without the hub.
    """

    def __init__(
        self,
        backbone: str | dict[str, Any] | BackboneSpec = MINILM,
        loss: str = PAIRWISE,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        warmup: float = 0.1,
        schedule: str = "linear",
        dropout: float = 0.1,
        pooling: str = "mean",
        pretrained: bool = True,
        backbone_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        spec = parse_backbone(backbone)
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; use one of {sorted(LOSSES)}")
        self.spec = spec
        self.encoder = backbones.load_encoder(spec, pretrained=pretrained, config=backbone_config)
        # from_pretrained() returns the encoder in eval mode; Lightning keeps modes as it finds them.
        self.encoder.train()
        self.learning_rate = learning_rate
        if pooling not in ("marker", "mean"):
            raise ValueError(f"unknown pooling {pooling!r}; use 'marker' or 'mean'")
        self.pooling = pooling
        self.loss_fn = LOSSES[loss]
        hidden = self.encoder.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
        # what the run was (study name, trainer settings), kept in checkpoints for evaluate and order
        self.run_settings: dict[str, Any] = {}
        self.save_hyperparameters(
            {
                "backbone": spec.to_dict(),
                "loss": loss,
                "learning_rate": learning_rate,
                "weight_decay": weight_decay,
                "warmup": warmup,
                "schedule": schedule,
                "dropout": dropout,
                "pooling": pooling,
                "pretrained": False,
                "backbone_config": self.encoder.config.to_dict(),
            }
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tuner_run"] = self.run_settings

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.run_settings = checkpoint.get("tuner_run", {})

    @classmethod
    def from_config(cls, config: ModelConfig) -> SentenceOrderer:
        return cls(
            backbone=config.backbone.to_dict(),
            loss=config.loss,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            warmup=config.warmup,
            schedule=config.schedule,
            dropout=config.dropout,
            pooling=config.pooling,
        )

    def forward(self, input_ids: Tensor, attention_mask: Tensor, markers: Tensor, slots: Tensor) -> Tensor:
        """Scores ``[batch, sentences]``.

        Args:
            markers: position of each sentence's marker token, ``[batch, sentences]``.
            slots: the sentence each token belongs to (its marker included), -1 elsewhere, ``[batch, length]``.
        """
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        index = markers.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        features = hidden.gather(1, index)
        if self.pooling == "mean":
            member = (slots.unsqueeze(1) == torch.arange(markers.shape[1], device=slots.device)[None, :, None])
            member = member.to(hidden.dtype)
            features = (member @ hidden) / member.sum(-1, keepdim=True).clamp(min=1)
        return self.head(features).squeeze(-1)

    def score(self, batch: dict[str, Tensor]) -> Tensor:
        """Scores of a collated batch (see :func:`tuner.data.batching.collate`)."""
        return self(batch["input_ids"], batch["attention_mask"], batch["markers"], batch["slots"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss_fn(self.score(batch), batch["gold"], batch["sentence_mask"])
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _evaluate(self, batch: dict[str, Tensor], prefix: str) -> None:
        scores = self.score(batch)
        mask, gold = batch["sentence_mask"], batch["gold"]
        size = batch["input_ids"].shape[0]
        sync = self.trainer.world_size > 1 if self._trainer is not None else False
        self.log(f"{prefix}_loss", self.loss_fn(scores, gold, mask), batch_size=size, sync_dist=sync)
        for name, values in ordering_metrics(scores, gold, mask).items():
            self.log(f"{prefix}_{name}", values.mean(), batch_size=size, prog_bar=name == "kendall_tau",
                     sync_dist=sync)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> Any:
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams["weight_decay"]},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.learning_rate,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.hparams["warmup"] * total)
        linear = self.hparams["schedule"] == "linear"

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if not linear:
                return 1.0
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
