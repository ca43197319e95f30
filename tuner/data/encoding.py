"""Tokenising documents once: every sentence encoded in chunks, cached on disk as an Arrow table.

The cache key is the data's fingerprint, the tokenizer's and the settings, so another tokenizer or
``max_length`` never reads a stale entry; an entry is written in a temporary folder of its own and
renamed, so a reader never sees half of one, and a failed write leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner import backbone
from tuner.data.splits import Document

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)


_CACHE_VERSION = "1"
ENCODE_CHUNK = 4096  # sentences per call into the tokenizer


def fingerprint(documents: Mapping[str, Sequence[Document]]) -> str:
    """A digest of the documents of every split, to record what a run trained and evaluated on."""
    digest = hashlib.sha256()
    for name in sorted(documents):
        digest.update(name.encode())
        for document in documents[name]:
            digest.update("\x00".join(document).encode())
            digest.update(b"\x01")
    return digest.hexdigest()[:16]


def sentence_budget(lengths: Sequence[int], max_length: int) -> int:
    """The largest per-sentence token cap such that markers, sentences and the end token fit.

    Long sentences are cut to the cap, short ones kept whole, so every sentence keeps its marker.
    """
    room = max_length - len(lengths) - 1
    if room < len(lengths):
        raise ValueError(f"{len(lengths)} sentences cannot fit in {max_length} tokens")
    if sum(lengths) <= room:
        return max(lengths, default=0)
    low, high = 1, max(lengths)
    while low < high:
        cap = (low + high + 1) // 2
        if sum(min(n, cap) for n in lengths) <= room:
            low = cap
        else:
            high = cap - 1
    return low


def encode_documents(documents: Sequence[Document], tokenizer: Any, max_length: int) -> list[list[list[int]]]:
    """Token ids of every sentence (no special tokens), each truncated to fit ``max_length`` in all."""
    flat = [sentence for document in documents for sentence in document]
    ids: list[list[int]] = []
    # in chunks: a signal is handled only when a call into the (Rust) tokenizer returns, and one call over
    # a large corpus takes seconds (2 s for ROCStories' 39k training sentences); chunks cost nothing
    for start in range(0, len(flat), ENCODE_CHUNK):
        ids.extend(tokenizer(flat[start : start + ENCODE_CHUNK], add_special_tokens=False)["input_ids"])
    encoded, start = [], 0
    for document in documents:
        sentences = ids[start : start + len(document)]
        start += len(document)
        cap = sentence_budget([len(s) for s in sentences], max_length)
        encoded.append([list(s[:cap]) for s in sentences])
    return encoded


def default_cache_dir() -> Path:
    root = os.environ.get("TUNER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tuner"
    )
    return Path(root) / "tokenized"


def encode_cached(
    documents: Sequence[Document], tokenizer: Any, max_length: int, cache_dir: Path | None
) -> list[list[list[int]]]:
    """:func:`encode_documents`, cached as a ``datasets`` Arrow table keyed by data, tokenizer and settings."""
    import datasets

    key = hashlib.sha256(
        "|".join([
            _CACHE_VERSION, fingerprint({"x": documents}), backbone.tokenizer_fingerprint(tokenizer), str(max_length)
        ]).encode()
    ).hexdigest()[:24]
    folder = (cache_dir or default_cache_dir()) / key
    if (folder / "dataset_info.json").is_file():
        try:
            table = datasets.load_from_disk(str(folder))
            log.info("tokenised data from cache %s", folder)
            return table.to_dict()["sentences"]
        except Exception as err:  # noqa: BLE001 - a broken cache entry is rebuilt, never fatal
            log.warning("ignoring unreadable cache %s: %s", folder, err)
    encoded = encode_documents(documents, tokenizer, max_length)
    try:
        _write_entry(folder, datasets.Dataset.from_dict({"sentences": encoded}))
    except OSError as err:
        log.warning("cannot cache tokenised data in %s: %s", folder, err)
    return encoded


def _write_entry(folder: Path, table: datasets.Dataset) -> None:
    """Save ``table`` as the cache entry ``folder``: in a temporary folder of its own (workers tokenising the
    same data at once each write theirs), renamed into place, so a reader never sees half an entry."""
    import datasets

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent))
    try:
        # mkdtemp makes it private; an entry gets the cache folder's permissions, as a plain mkdir would
        tmp.chmod(folder.parent.stat().st_mode & 0o777)
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            table.save_to_disk(str(tmp))
        finally:
            if bars:
                datasets.enable_progress_bars()
        try:
            tmp.replace(folder)
        except OSError:  # a folder is not replaced by another unless empty
            if not (folder / "dataset_info.json").is_file():
                raise
            log.debug("cache entry %s was written by another worker meanwhile", folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once renamed
