"""Precision and threads decided from the hardware the process runs on."""

from __future__ import annotations

import logging

import pytest
import torch

from tuner import hardware
from tuner.config.loader import parse_study_file
from tuner.config.schema import TrainerConfig
from tuner.errors import ConfigError


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch):
    """A CPU-only machine whose bf16 features the test chooses."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    hardware._warn_once.cache_clear()

    def features(amx: bool = False, avx512_bf16: bool = False) -> None:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)

    return features


def test_auto_is_the_default_and_the_shipped_studies_use_it() -> None:
    assert TrainerConfig().precision == "auto"
    from pathlib import Path

    from tuner.config.loader import read_study_file

    for path in sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.toml")):
        assert read_study_file(path).trainer.precision == "auto", path


@pytest.mark.parametrize(("amx", "avx512_bf16", "expected"), [
    (False, False, "32-true"),   # AVX2 only: bf16 would be emulated
    (True, False, "bf16-mixed"),
    (False, True, "bf16-mixed"),
])
def test_auto_on_a_cpu_picks_bf16_only_where_it_is_native(cpu, amx: bool, avx512_bf16: bool, expected: str) -> None:
    cpu(amx=amx, avx512_bf16=avx512_bf16)
    assert hardware.resolve_precision("auto") == expected
    assert hardware.resolve_precision("auto", "cpu") == expected


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_on_cuda_picks_bf16_where_the_gpu_has_it(monkeypatch: pytest.MonkeyPatch, bf16: bool,
                                                        expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert hardware.resolve_precision("auto") == expected
    assert hardware.resolve_precision("auto", "gpu") == expected
    assert hardware.resolve_precision("auto", "cpu") != "16-mixed"  # an explicit CPU accelerator stays on the CPU


def test_explicit_bf16_wins_and_warns_once_on_a_cpu_without_it(cpu, caplog: pytest.LogCaptureFixture) -> None:
    cpu()
    with caplog.at_level(logging.WARNING, logger="tuner.hardware"):
        assert hardware.resolve_precision("bf16-mixed") == "bf16-mixed"
        assert hardware.resolve_precision("bf16-mixed") == "bf16-mixed"
        assert hardware.resolve_precision("32-true") == "32-true"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "\n" not in warnings[0]
    assert "'bf16-mixed'" in warnings[0] and "'auto' would pick '32-true'" in warnings[0]


def test_explicit_bf16_does_not_warn_where_it_is_native(cpu, caplog: pytest.LogCaptureFixture) -> None:
    cpu(amx=True)
    with caplog.at_level(logging.WARNING, logger="tuner.hardware"):
        assert hardware.resolve_precision("bf16-mixed") == "bf16-mixed"
    assert not caplog.records


def test_unknown_precision_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"trainer.precision.*'auto'"):
        parse_study_file({"data": {"builtin": "python-docs"}, "trainer": {"precision": "fp8"}}, name="x")


def test_describe_names_the_machine_and_the_resolved_precision(cpu) -> None:
    cpu(avx512_bf16=True)
    record = hardware.describe("auto")
    assert record["precision"] == "bf16-mixed" and record["precision_asked"] == "auto"
    assert record["avx512_bf16"] is True and record["amx"] is False
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["torch_threads"] == torch.get_num_threads()
    assert record["cores"] >= 1 and record["cpu_model"]
    assert record["gpu"] is None
    assert "AVX512-BF16" in hardware.summary(record)


def test_threads_are_an_even_share_of_the_cores(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(hardware, "cores", lambda: 8)
    with caplog.at_level(logging.WARNING, logger="tuner.hardware"):
        assert hardware.thread_share(1) == 8
        assert hardware.thread_share(4) == 2
        assert hardware.thread_share(2, requested=4) == 4
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="tuner.hardware"):
        assert hardware.thread_share(16) == 1  # never zero
    assert "16 workers on the 8 cores" in caplog.records[0].getMessage()


def test_more_threads_than_cores_warns(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(hardware, "cores", lambda: 2)
    with caplog.at_level(logging.WARNING, logger="tuner.hardware"):
        assert hardware.thread_share(2, requested=2) == 2
    assert len(caplog.records) == 1
    assert "more than the 2 cores" in caplog.records[0].getMessage()
    assert "use 1 thread(s) per worker" in caplog.records[0].getMessage()


def test_set_threads_sets_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr(hardware, "cores", lambda: 2)
    try:
        assert hardware.set_threads(2) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
