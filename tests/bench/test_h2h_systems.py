"""The head-to-head's systems on a tiny backbone: each trains with the shared recipe and is observed at every
validation; HF chooses the backbone in ``model_init(trial)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import synthetic_documents, write_lines

from bench.h2h_systems import EventLog, read_events, run_hf, run_optuna, tuner_study


@pytest.fixture()
def spec(tmp_path: Path, tiny_bert: str) -> dict[str, Any]:
    data = {split: str(write_lines(tmp_path / f"{split}.lower", synthetic_documents(n, seed=i)))
            for i, (split, n) in enumerate((("train", 16), ("validation", 8), ("test", 8)))}
    folder = tmp_path / "cell"
    folder.mkdir()
    return {"system": "hf", "seed": 0, "sampler_seed": 13, "training_seed": 12, "folder": str(folder), "data": data,
            "backbones": [{"name": tiny_bert, "config": {"num_hidden_layers": n}} for n in (2, 1)],
            "batch_sizes": [4, 8], "learning_rate": [1e-5, 1e-3], "max_epochs": 1, "max_length": 128, "part": 0}


def test_hf_draws_the_backbone_in_model_init_and_trains_it(spec: dict[str, Any]) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_hf(spec, EventLog(Path(spec["folder"])), n_trials=4)  # TPESampler(seed=13) draws both backbones
    events = read_events(Path(spec["folder"]) / "events.jsonl")
    assert len({e["trial"] for e in events}) == 4
    labels = {e["params"]["backbone"] for e in events}
    assert labels == {f"{spec['backbones'][0]['name']}[num_hidden_layers={n}]" for n in (2, 1)}


def test_plain_optuna_clips_gradients_and_seeds_from_the_cell(spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    import lightning.pytorch as pl

    made: list[pl.Trainer] = []
    init = pl.Trainer.__init__

    def record(self: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(pl.Trainer, "__init__", record)
    study = run_optuna(spec, EventLog(Path(spec["folder"])), optuna.samplers.RandomSampler(seed=spec["sampler_seed"]),
                       optuna.pruners.NopPruner(), n_trials=1)
    assert [t.gradient_clip_val for t in made] == [1.0]
    again = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=spec["sampler_seed"]))
    drawn = again.ask(study.trials[0].distributions).params
    assert study.trials[0].params == drawn  # the cell's sampler seed, not the replay seed
    assert len(read_events(Path(spec["folder"]) / "events.jsonl")) == 1


def test_tuner_gets_the_cell_s_sampler_and_training_seeds(spec: dict[str, Any]) -> None:
    text = tuner_study(spec)
    assert 'sampler = { type = "tpe", seed = 13 }' in text and "seed = 12" in text
    assert json.dumps(spec["learning_rate"][0]) in text
