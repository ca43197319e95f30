"""torch's private names that tuner uses (see :mod:`tuner._compat`)."""

from __future__ import annotations

import torch


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles, which make bf16 fast: torch's only runtime check is private."""
    return bool(torch.cpu._is_amx_tile_supported())


def cpu_has_avx512_bf16() -> bool:
    """Whether this CPU has AVX512-BF16: torch's only runtime check is private."""
    return bool(torch.cpu._is_avx512_bf16_supported())
