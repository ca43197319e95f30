"""What this process runs on, and the settings that follow from it: precision and CPU threads.

Defaults tuned on one machine are wrong on another: bf16 autocast trains MiniLM about twice as fast
as fp32 on a CPU with AMX, and 15 times slower on a CPU without native bf16 (an AVX2-only AMD EPYC,
where it is emulated). So ``trainer.precision = "auto"`` and the thread counts are decided here, per
process, from the hardware the process actually sees, and every trial records what was decided.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from typing import Any

import torch

from tuner._compat.torch import cpu_has_amx, cpu_has_avx512_bf16

log = logging.getLogger(__name__)

AUTO = "auto"


@functools.cache
def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    """The CPU cores this process may run on (its affinity mask, as a container or ``taskset`` sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cpu_bf16() -> dict[str, bool]:
    """The CPU features that make bf16 arithmetic native rather than emulated."""
    return {"amx": cpu_has_amx(), "avx512_bf16": cpu_has_avx512_bf16()}


def _accelerator(accelerator: str) -> str:
    """Which device Lightning's ``accelerator`` setting lands on here: ``cuda``, ``cpu`` or another."""
    if accelerator in ("auto", "gpu", "cuda"):
        if torch.cuda.is_available():
            return "cuda"
        if accelerator == "auto" and torch.backends.mps.is_available():
            return "mps"
        return "cpu" if accelerator == "auto" else accelerator
    return accelerator


def best_precision(accelerator: str = "auto") -> str:
    """The precision ``auto`` resolves to on this machine.

    CUDA: ``bf16-mixed`` where the GPU supports bf16, else ``16-mixed``. CPU: ``bf16-mixed`` only where
    the CPU has native bf16 (AMX or AVX512-BF16), else ``32-true``. Anything else: ``32-true``.
    """
    device = _accelerator(accelerator)
    if device == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if device == "cpu" and any(cpu_bf16().values()):
        return "bf16-mixed"
    return "32-true"


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """``precision`` as Lightning takes it: ``auto`` becomes :func:`best_precision`; an explicit value
    wins, with one warning when it asks the CPU for bf16 that it would only emulate."""
    if precision == AUTO:
        return best_precision(accelerator)
    if "bf16" in precision and _accelerator(accelerator) == "cpu" and not any(cpu_bf16().values()):
        _warn_once(f"trainer.precision = {precision!r} on a CPU without native bf16 ({cpu_model()}, "
                   f"{torch.backends.cpu.get_cpu_capability()}: no AMX or AVX512-BF16) is emulated and many times "
                   f"slower; 'auto' would pick {best_precision(accelerator)!r}")
    return precision


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def thread_share(workers: int = 1, requested: int | None = None) -> int:
    """The torch threads for each of ``workers`` processes sharing this machine.

    By default each worker gets an even share of the cores. ``requested`` (``$TUNER_NUM_THREADS``)
    wins, with a warning when the workers together would run more threads than there are cores:
    trainings that share cores slow each other down many times over (``bench/threads.py``).
    """
    available = cores()
    share = max(1, available // max(1, workers))
    threads = requested or share
    if workers > available:
        log.warning("%d workers on the %d cores here: trainings that share cores slow each other down many "
                    "times over; start at most %d", workers, available, available)
    elif threads * workers > available:
        log.warning("%d worker(s) x %d threads is more than the %d cores here, and trainings that share cores "
                    "slow each other down many times over; use %d thread(s) per worker (TUNER_NUM_THREADS)",
                    workers, threads, available, share)
    return threads


def set_threads(workers: int = 1, requested: int | None = None) -> int:
    """Set torch's intra-op threads to :func:`thread_share` and its inter-op threads to 1; returns the former.

    Inter-op parallelism only runs independent branches of a graph side by side, which this model has
    none of; a single inter-op thread leaves the cores to the intra-op pool.
    """
    threads = thread_share(workers, requested)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # it can be set only once per process, before any inter-op work
        log.debug("inter-op threads already fixed at %d", torch.get_num_interop_threads())
    return threads


def describe(precision: str | None = None, accelerator: str = "auto") -> dict[str, Any]:
    """This machine as recorded on every trial and in every benchmark result.

    Args:
        precision: the study's ``trainer.precision``; with it, the record holds what it resolved to.
    """
    record: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cores": cores(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **cpu_bf16(),
        "torch_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }
    if precision is not None:
        record["precision"] = resolve_precision(precision, accelerator)
        record["precision_asked"] = precision
    return record


def summary(record: dict[str, Any]) -> str:
    """One line naming the machine of a :func:`describe` record, for READMEs and logs."""
    bf16 = "AMX" if record.get("amx") else "AVX512-BF16" if record.get("avx512_bf16") else "no native bf16"
    gpu = f", {record['gpu']}" if record.get("gpu") else ""
    return (f"{record['cpu_model']} ({record['cpu_capability']}, {bf16}), {record['cores']} cores, "
            f"{record['torch_threads']} torch threads{gpu}")
