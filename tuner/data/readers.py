"""Reading documents: files (one per line, CSV, JSONL, plain text), a hub data set, or a built-in corpus.

A document is a list of sentences in their true order. Bad input raises :class:`DataError` naming
the file and line, or the column. :func:`load_documents` reads every split a ``[data]`` section names,
filtered and, where the files do not give them, carved by :mod:`tuner.data.splits`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tuner.config.schema import DataConfig
from tuner.data.splits import SPLITS, Document, carve_splits, filter_documents
from tuner.errors import DataError

log = logging.getLogger(__name__)


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


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
