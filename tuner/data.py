"""Documents to batches: readers, seeded splits, shuffling, per-sentence truncation and dynamic padding.

A document is a list of sentences in their true order. The pipeline:

1. Read documents from files (one per line, CSV, JSONL, plain text), a hub data set, or a built-in
   corpus; bad input raises :class:`DataError` naming the file and line or the column.
2. Drop documents with fewer than ``min_sentences`` sentences and cut or drop those above
   ``max_sentences`` (``overflow = "truncate"`` keeps the first ``max_sentences``, a contiguous
   prefix, so its order stays meaningful; ``"skip"`` drops the document). Counts are logged.
3. Split: given files, or validation and test carved out by a hash of each document's text and the seed.
   A document's split depends on its text alone, so even a duplicated document cannot land in two.
4. Tokenise every sentence once, cached on disk by data fingerprint, tokenizer and settings.
5. At batch time, shuffle each document's sentences with a seeded generator (a fixed permutation per
   document for validation and test, a fresh one per epoch for training), put the tokenizer's marker
   token before each sentence, and pad to the longest sequence in the batch.

The model sees only the shuffled input; the gold position of each input sentence is the target.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tuner import backbone
from tuner.config import DataConfig, data_config
from tuner.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_SPLIT_SALT = {"train": 0, "validation": 1, "test": 2, "predict": 3}
_CACHE_VERSION = "1"
_ENCODE_CHUNK = 4096  # sentences per call into the tokenizer
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")

Document = list[str]


# ---------------------------------------------------------------------------------------------------
# Reading


def split_sentences(text: str) -> list[str]:
    """Split running text into sentences at ``.``, ``!`` or ``?`` followed by a capital or digit."""
    text = " ".join(text.split())
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _decoded_lines(path: Path) -> list[str]:
    """The file's lines (with their endings), decoded strictly so a bad byte names its line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"data file {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"data file {path} is a directory, not a file") from None
    except OSError as err:
        raise DataError(f"data file {path} cannot be read: {err.strerror or err}") from None
    return decode_lines(raw, str(path))


def decode_lines(raw: bytes, source: str) -> list[str]:
    """``raw`` split into lines (with their endings) and decoded strictly, so a bad byte names its line
    in ``source`` (a file, or standard input); a leading byte order mark is dropped."""
    lines = []
    for number, line in enumerate(raw.splitlines(keepends=True), start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise DataError(
                f"{source}:{number}: not valid UTF-8 (byte {line[err.start]:#04x} at column {err.start + 1}); "
                "re-encode it as UTF-8"
            ) from None
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    return lines


def file_format(path: Path, config: DataConfig) -> str:
    """The reader for a file: ``config.format``, or guessed from the extension when ``auto``."""
    if config.format != "auto":
        return config.format
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".txt", ".md"):
        return "text"
    return "lines"


def read_file(path: str | Path, config: DataConfig) -> list[Document]:
    """Read every document of one file, in the format the config (or the extension) says."""
    path = Path(path)
    kind = file_format(path, config)
    lines = _decoded_lines(path)
    if kind == "lines":
        # data.separator defaults to TAB, which suits .tsv files too; a separator that is set wins everywhere
        return [_clean(line.rstrip("\r\n").split(config.separator)) for line in lines if line.strip()]
    if kind == "text":
        paragraphs = re.split(r"\n\s*\n", "".join(lines))
        return [split_sentences(p) for p in paragraphs if p.strip()]
    if kind == "csv":
        rows = _csv_rows(path, lines)
    else:
        rows = _jsonl_rows(path, lines)
    return _rows_to_documents(rows, config, str(path))


def _clean(sentences: Iterable[str]) -> Document:
    return [s.strip() for s in sentences if s and s.strip()]


def _csv_rows(path: Path, lines: list[str]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    reader = csv.DictReader(io.StringIO("".join(lines), newline=""))
    try:
        for row in reader:
            if None in row:
                raise DataError(f"{path}:{reader.line_num}: more fields than the header has columns")
            yield f"{path}:{reader.line_num}", row
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV: {err}") from None


def _jsonl_rows(path: Path, lines: list[str]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: not valid JSON: {err.msg}") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
        yield f"{path}:{number}", row


def _rows_to_documents(
    rows: Iterable[tuple[str, Mapping[str, Any]]], config: DataConfig, source: str
) -> list[Document]:
    """Documents from table rows: several sentence columns, a list column, or a text column."""
    documents: list[Document] = []
    columns: list[str] | None = None
    for where, row in rows:
        if columns is None:
            columns = list(row)
            _check_columns(columns, config, source)
        documents.append(_row_to_document(row, config, where))
    return documents


def _check_columns(columns: Sequence[str], config: DataConfig, source: str) -> None:
    available = ", ".join(map(repr, columns))
    if config.sentence_columns:
        wanted = [*config.sentence_columns, *config.ending_columns]
        wanted += [config.answer_column] if config.answer_column else []
        for column in wanted:
            if column not in columns:
                raise DataError(f"{source}: unknown column {column!r} (data.sentence_columns); columns are {available}")
        return
    if config.sentences_column not in columns and config.text_column not in columns:
        raise DataError(
            f"{source}: unknown column: neither {config.sentences_column!r} (data.sentences_column) nor "
            f"{config.text_column!r} (data.text_column) is present; columns are {available}"
        )


def _row_to_document(row: Mapping[str, Any], config: DataConfig, where: str) -> Document:
    if config.sentence_columns:
        sentences = [str(row[c]) for c in config.sentence_columns]
        if config.answer_column:
            answer = row[config.answer_column]
            try:
                ending = config.ending_columns[int(answer) - 1]
            except (TypeError, ValueError, IndexError):
                raise DataError(
                    f"{where}: column {config.answer_column!r} holds {answer!r}; expected 1 to "
                    f"{len(config.ending_columns)} to pick one of {list(config.ending_columns)}"
                ) from None
            sentences.append(str(row[ending]))
        return _clean(sentences)
    if config.sentences_column in row:
        value = row[config.sentences_column]
        if isinstance(value, str):
            stripped = value.strip()
            if stripped.startswith("["):
                try:
                    value = json.loads(stripped)
                except json.JSONDecodeError:
                    raise DataError(f"{where}: column {config.sentences_column!r} is not a valid JSON list") from None
            else:
                value = value.split(config.separator)
        if not isinstance(value, (list, tuple)):
            raise DataError(f"{where}: column {config.sentences_column!r} must hold a list of sentences")
        return _clean(str(s) for s in value)
    return split_sentences(str(row[config.text_column]))


def python_docs_corpus() -> list[Document]:
    """Paragraphs of the Python reference that the interpreter ships (``pydoc_data.topics``).

    Real English prose available on every Python install, with no network: each paragraph of
    three or more sentences is a document. Indented paragraphs (code, grammar) are left out.
    """
    from pydoc_data.topics import topics

    documents = []
    for key in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[key]):
            if paragraph.startswith((" ", "\t")) or "::" in paragraph or ">>>" in paragraph:
                continue
            sentences = split_sentences(paragraph)
            if len(sentences) >= 3 and all(20 <= len(s) <= 300 for s in sentences):
                documents.append(sentences)
    return documents


def _hub_documents(config: DataConfig) -> dict[str, list[Document]]:
    """Splits of a Hugging Face hub data set; splits it lacks are carved out of its train split."""
    import datasets

    assert config.hub is not None
    try:
        available = datasets.get_dataset_split_names(config.hub, config.hub_config)
    except Exception as err:  # noqa: BLE001 - the hub raises many kinds; all mean "cannot load"
        raise DataError(f"cannot load hub data set {config.hub!r}: {err}") from None
    found: dict[str, list[Document]] = {}
    for ours, theirs in zip(SPLITS, config.hub_splits, strict=True):
        if theirs not in available:
            if ours == "train":
                raise DataError(f"hub data set {config.hub!r} has no split {theirs!r}; it has {available}")
            continue
        table = datasets.load_dataset(config.hub, config.hub_config, split=theirs)
        rows = ((f"{config.hub}[{theirs}] row {i}", row) for i, row in enumerate(table))
        found[ours] = _rows_to_documents(rows, config, f"{config.hub}[{theirs}]")
    return found


# ---------------------------------------------------------------------------------------------------
# Filtering and splitting


@dataclass
class FilterStats:
    read: int = 0
    too_short: int = 0
    truncated: int = 0
    too_long: int = 0

    @property
    def kept(self) -> int:
        return self.read - self.too_short - self.too_long


def filter_documents(documents: Sequence[Document], config: DataConfig) -> tuple[list[Document], FilterStats]:
    """Apply ``min_sentences``, ``max_sentences`` with the ``overflow`` rule, and ``max_documents``."""
    stats = FilterStats(read=len(documents))
    kept: list[Document] = []
    for document in documents:
        if len(document) < config.min_sentences:
            stats.too_short += 1
        elif len(document) > config.max_sentences:
            if config.overflow == "skip":
                stats.too_long += 1
            else:
                stats.truncated += 1
                kept.append(document[: config.max_sentences])
        else:
            kept.append(document)
    return kept, stats


def _split_of(document: Document, seed: int, fractions: tuple[float, float]) -> str:
    digest = hashlib.sha256(f"{seed}\x00{chr(0).join(document)}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    val, test = fractions
    return "validation" if u < val else "test" if u < val + test else "train"


def carve_splits(documents: Sequence[Document], seed: int, fractions: tuple[float, float]) -> dict[str, list[Document]]:
    """Seeded train/validation/test split by a hash of each document's text: no leakage by construction."""
    splits: dict[str, list[Document]] = {name: [] for name in SPLITS}
    for document in documents:
        splits[_split_of(document, seed, fractions)].append(document)
    return splits


def load_documents(config: DataConfig) -> dict[str, list[Document]]:
    """Every split's documents, read, split, filtered and logged. Empty splits are errors."""
    if config.train is not None:
        sources: dict[str, str | None] = {"train": config.train, "validation": config.validation, "test": config.test}
        raw = {name: read_file(path, config) for name, path in sources.items() if path is not None}
        labels = {name: str(path) for name, path in sources.items() if path is not None}
    elif config.hub is not None:
        raw = _hub_documents(config)
        labels = {name: f"{config.hub}[{name}]" for name in raw}
        if "validation" not in raw or "test" not in raw:
            # carve only the missing splits out of train
            val, test = config.split
            fractions = (0.0 if "validation" in raw else val, 0.0 if "test" in raw else test)
            carved = carve_splits(raw.pop("train"), config.seed, fractions)
            raw = {name: raw.get(name, carved[name]) for name in SPLITS}
            labels = {name: labels.get(name, f"{config.hub} (seeded split)") for name in SPLITS}
    else:
        if config.path is not None:
            documents = read_file(config.path, config)
            label = f"{config.path} (seeded split)"
        else:
            documents = python_docs_corpus()
            label = "the Python documentation (seeded split)"
        raw = carve_splits(documents, config.seed, config.split)
        labels = dict.fromkeys(SPLITS, label)

    result: dict[str, list[Document]] = {}
    for name, documents in raw.items():
        kept, stats = filter_documents(documents, config)
        if config.max_documents is not None:
            kept = kept[: config.max_documents]
        log.info(
            "%s: %d documents from %s; skipped %d with fewer than %d sentences, %d with more than %d; "
            "truncated %d to %d sentences",
            name, len(kept), labels[name], stats.too_short, config.min_sentences, stats.too_long,
            config.max_sentences, stats.truncated, config.max_sentences,
        )
        if not kept and (name != "test" or documents):
            raise DataError(
                f"{name} split from {labels[name]} is empty: {stats.read} documents read, "
                f"{stats.too_short} had fewer than {config.min_sentences} sentences"
                + ("" if stats.read else "; check data.format and data.separator")
            )
        result[name] = kept
    return result


def fingerprint(documents: Mapping[str, Sequence[Document]]) -> str:
    """A digest of the documents of every split, to record what a run trained and evaluated on."""
    digest = hashlib.sha256()
    for name in sorted(documents):
        digest.update(name.encode())
        for document in documents[name]:
            digest.update("\x00".join(document).encode())
            digest.update(b"\x01")
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# Encoding


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
    for start in range(0, len(flat), _ENCODE_CHUNK):
        ids.extend(tokenizer(flat[start : start + _ENCODE_CHUNK], add_special_tokens=False)["input_ids"])
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
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(folder.name + f".tmp{id(encoded)}")
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            datasets.Dataset.from_dict({"sentences": encoded}).save_to_disk(str(tmp))
        finally:
            if bars:
                datasets.enable_progress_bars()
        tmp.replace(folder)
    except OSError as err:
        log.warning("cannot cache tokenised data in %s: %s", folder, err)
    return encoded


# ---------------------------------------------------------------------------------------------------
# Shuffling and batching


def permutation(seed: int, split: str, index: int, epoch: int, n: int) -> np.ndarray:
    """The input order of a document's sentences: ``perm[k]`` is the gold position of input slot k."""
    return np.random.default_rng([seed, _SPLIT_SALT[split], epoch, index]).permutation(n)


class OrderingDataset(Dataset):
    """Shuffled documents: each item is the marker-joined input and each input sentence's gold position.

    Training (``fixed=False``) draws a fresh permutation per epoch; other splits use one fixed
    permutation per document, so every run is evaluated on the same inputs. Items are addressed by
    ``(index, epoch)`` pairs from :class:`DocumentBatchSampler` (or a plain index: epoch 0).
    """

    def __init__(
        self,
        documents: Sequence[Sequence[Sequence[int]]],
        marker_id: int,
        end_id: int | None,
        split: str,
        seed: int,
        fixed: bool,
    ) -> None:
        self.documents = documents
        self.marker_id = marker_id
        self.end_id = end_id
        self.split = split
        self.seed = seed
        self.fixed = fixed
        self.lengths = [sum(len(s) + 1 for s in d) + (end_id is not None) for d in documents]

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        sentences = self.documents[index]
        perm = permutation(self.seed, self.split, index, 0 if self.fixed else epoch, len(sentences))
        input_ids: list[int] = []
        markers: list[int] = []
        slots: list[int] = []
        for slot, gold in enumerate(perm):
            markers.append(len(input_ids))
            input_ids.append(self.marker_id)
            input_ids.extend(sentences[gold])
            slots.extend([slot] * (len(sentences[gold]) + 1))
        if self.end_id is not None:
            input_ids.append(self.end_id)
            slots.append(-1)
        return {"input_ids": input_ids, "markers": markers, "slots": slots, "gold": perm.tolist(), "index": index}


def collate(items: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest input and the most sentences in the batch."""
    batch, length = len(items), max(len(item["input_ids"]) for item in items)
    sentences = max(len(item["markers"]) for item in items)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, length), dtype=torch.long)
    markers = torch.zeros((batch, sentences), dtype=torch.long)
    # slot of the sentence each token belongs to (marker included); -1 for the end token and padding
    slots = torch.full((batch, length), -1, dtype=torch.long)
    gold = torch.zeros((batch, sentences), dtype=torch.long)
    mask = torch.zeros((batch, sentences), dtype=torch.bool)
    for row, item in enumerate(items):
        n, s = len(item["input_ids"]), len(item["markers"])
        input_ids[row, :n] = torch.tensor(item["input_ids"])
        attention[row, :n] = 1
        markers[row, :s] = torch.tensor(item["markers"])
        slots[row, :n] = torch.tensor(item["slots"])
        gold[row, :s] = torch.tensor(item["gold"])
        mask[row, :s] = True
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "markers": markers,
        "slots": slots,
        "gold": gold,
        "sentence_mask": mask,
        "index": torch.tensor([item["index"] for item in items]),
    }


class _Epoch:
    """What Lightning calls ``set_epoch`` on at the start of every training epoch."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class DocumentBatchSampler:
    """Batches of ``(index, epoch)`` keys, optionally grouped by length to cut padding.

    With ``bucket``, documents are sorted by length within windows of 50 batches, and the batches are
    then shuffled, so batches hold similar lengths but the order of lengths stays random.

    Under DDP every rank builds the same batches and takes every ``replicas``-th one, starting at its
    ``rank``. Lightning cannot put its distributed sampler inside a batch sampler of its own kind, so the
    sharding is done here. Every rank must run the same number of steps, so when the batches do not
    divide evenly, the first ones are repeated to fill the last round (as ``DistributedSampler`` pads).
    """

    _WINDOW = 50

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool, bucket: bool, seed: int,
                 rank: int = 0, replicas: int = 1) -> None:
        if not 0 <= rank < replicas:
            raise ValueError(f"rank {rank} is not one of {replicas} replicas")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.bucket = bucket
        self.seed = seed
        self.rank = rank
        self.replicas = replicas
        self.sampler = _Epoch()

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.lengths) / self.batch_size) / self.replicas)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.sampler.epoch
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        if self.bucket:
            window = self.batch_size * self._WINDOW
            chunks = [order[i : i + window] for i in range(0, len(order), window)]
            order = np.concatenate([c[np.argsort([self.lengths[i] for i in c], kind="stable")] for c in chunks])
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.replicas > 1 and batches:
            padded = len(self) * self.replicas
            batches = (batches * self.replicas)[:padded][self.rank :: self.replicas]
        for batch in batches:
            yield [(index, epoch) for index in batch]


# ---------------------------------------------------------------------------------------------------
# The DataModule


class SentenceOrderingData(pl.LightningDataModule):
    """Shuffled, tokenised, dynamically padded documents for one backbone's tokenizer.

    Args:
        data: the study's ``[data]`` settings (a :class:`DataConfig` or its dict).
        backbone_name: hub name or local path of the backbone, whose tokenizer encodes the text.
    """

    def __init__(self, data: DataConfig | Mapping[str, Any], backbone_name: str) -> None:
        super().__init__()
        self.config = data if isinstance(data, DataConfig) else data_config(data)
        self.save_hyperparameters({"data": asdict(self.config), "backbone_name": backbone_name})
        self.backbone_name = backbone_name
        self.tokenizer = backbone.load_tokenizer(backbone_name)
        self.marker_id = backbone.marker_id(self.tokenizer)
        self.end_id = backbone.end_id(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.max_length = self._max_length()
        self.datasets: dict[str, OrderingDataset] = {}
        self.fingerprint: str | None = None

    def _max_length(self) -> int:
        limit = self.config.max_length
        model_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(model_max, int) and 0 < model_max < 100_000:
            limit = min(limit, model_max)
        if 2 * self.config.max_sentences + 1 > limit:
            raise DataError(
                f"data.max_length {limit} cannot hold data.max_sentences {self.config.max_sentences} "
                "sentences with a marker each; raise max_length or lower max_sentences"
            )
        return limit

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        documents = load_documents(self.config)
        self.fingerprint = fingerprint(documents)
        cache = Path(self.config.cache_dir) if self.config.cache_dir else None
        for name, docs in documents.items():
            encoded = encode_cached(docs, self.tokenizer, self.max_length, cache)
            self.datasets[name] = self.make_dataset(encoded, name)

    def make_dataset(self, encoded: Sequence[Sequence[Sequence[int]]], split: str) -> OrderingDataset:
        """A dataset over already encoded documents, shuffled as ``split`` is."""
        assert self.marker_id is not None
        return OrderingDataset(encoded, self.marker_id, self.end_id, split, self.config.seed, fixed=split != "train")

    def documents_from_file(self, path: str | Path, split: str = "predict") -> OrderingDataset:
        """A dataset over any file the readers understand, shuffled with the fixed permutation."""
        documents, stats = filter_documents(read_file(path, self.config), self.config)
        if not documents:
            raise DataError(f"{path}: no document with at least {self.config.min_sentences} sentences "
                            f"({stats.read} read, split at {self.config.separator!r}); check data.format and "
                            "data.separator (--set data.separator=...)")
        encoded = encode_documents(documents, self.tokenizer, self.max_length)
        return self.make_dataset(encoded, split)

    def loader(self, dataset: OrderingDataset, shuffle: bool = False) -> DataLoader:
        # attached to a DDP trainer, each rank loads its own share of the batches
        trainer = self.trainer
        rank, replicas = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = DocumentBatchSampler(
            dataset.lengths, self.config.batch_size, shuffle=shuffle, bucket=self.config.bucket, seed=self.config.seed,
            rank=rank, replicas=replicas,
        )
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=_Collate(self.pad_id),
            num_workers=self.config.num_workers,
            persistent_workers=self.config.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.datasets["train"], shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.datasets["validation"])

    def test_dataloader(self) -> DataLoader:
        if not self.datasets.get("test"):
            raise DataError("this study's data has no test split (set data.test, or use data.path with data.split)")
        return self.loader(self.datasets["test"])


class _Collate:
    """A picklable collate function (data loader workers need to pickle it)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return collate(items, self.pad_id)

