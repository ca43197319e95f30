"""Tokenisation: chunked encoding equals one call, the sentence budget, and the on-disk cache."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import data_module, synthetic_documents

from tuner.data import encoding
from tuner.data.encoding import encode_cached, encode_documents, sentence_budget


def test_tokenising_in_chunks_gives_the_ids_of_one_call(tiny_bert: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.backbone import load_tokenizer

    tokenizer = load_tokenizer(tiny_bert)
    docs = synthetic_documents(7, seed=5)
    whole = encode_documents(docs, tokenizer, 96)
    calls: list[int] = []

    def counting(texts: list[str], **options: object) -> object:
        calls.append(len(texts))
        return tokenizer(texts, **options)

    monkeypatch.setattr(encoding, "ENCODE_CHUNK", 4)  # chunks cut across documents
    assert encode_documents(docs, counting, 96) == whole
    assert calls == [4] * (len(calls) - 1) + [sum(len(d) for d in docs) - 4 * (len(calls) - 1)]
    assert len(calls) > len(docs) // 2


def test_sentence_budget() -> None:
    assert sentence_budget([3, 3], 20) == 3
    assert sentence_budget([100, 2, 50], 40) == 17  # 17 + 2 + 17 = 36 = 40 - 3 markers - 1 end
    with pytest.raises(ValueError):
        sentence_budget([1] * 10, 20)


def test_tokenised_data_is_cached(tmp_path: Path, tiny_bert: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = data_module(tmp_path, tiny_bert)
    docs = synthetic_documents(30, seed=5)
    first = encode_cached(docs, module.tokenizer, 64, tmp_path / "c")

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("tokenised again despite the cache")

    monkeypatch.setattr(encoding, "encode_documents", fail)
    assert encode_cached(docs, module.tokenizer, 64, tmp_path / "c") == first
    with pytest.raises(AssertionError, match="tokenised again"):
        encode_cached(docs, module.tokenizer, 48, tmp_path / "c")  # other settings: another key


def _cache_entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_two_writers_of_one_cache_entry_both_succeed(tmp_path: Path, tiny_bert: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers tokenising the same data at once each write their own temporary folder: the first
    rename makes the entry, the second finds it made and removes its own."""
    import datasets

    from tuner.backbone import load_tokenizer

    tokenizer = load_tokenizer(tiny_bert)
    docs = synthetic_documents(12, seed=5)
    expected = encode_documents(docs, tokenizer, 64)
    save = datasets.Dataset.save_to_disk
    both_written = threading.Barrier(2, timeout=60)
    written: list[str] = []

    def save_then_wait(self: datasets.Dataset, path: str, **options: object) -> None:
        save(self, path, **options)  # type: ignore[arg-type]
        written.append(path)
        both_written.wait()  # neither renames before both have written

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", save_then_wait)
    results: list[object] = []
    writers = [threading.Thread(target=lambda: results.append(encode_cached(docs, tokenizer, 64, tmp_path / "c")))
               for _ in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert results == [expected, expected]
    assert len(set(written)) == 2  # a temporary folder each
    [entry] = _cache_entries(tmp_path / "c")  # no temporary folder left behind
    assert (tmp_path / "c" / entry).stat().st_mode == (tmp_path / "c").stat().st_mode  # not private to mkdtemp
    monkeypatch.setattr(encoding, "encode_documents", lambda *args: pytest.fail("tokenised again despite the cache"))
    assert encode_cached(docs, tokenizer, 64, tmp_path / "c") == expected
    assert _cache_entries(tmp_path / "c") == [entry]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), RuntimeError("arrow failed on purpose")])
def test_a_failed_cache_write_leaves_no_temporary_folder(tmp_path: Path, tiny_bert: str,
                                                         monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    import datasets

    from tuner.backbone import load_tokenizer

    tokenizer = load_tokenizer(tiny_bert)
    docs = synthetic_documents(12, seed=5)
    save = datasets.Dataset.save_to_disk

    def half_written(self: datasets.Dataset, path: str, **options: object) -> None:
        save(self, path, **options)  # type: ignore[arg-type]
        (Path(path) / "dataset_info.json").unlink()
        raise error

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", half_written)
    if isinstance(error, OSError):  # the data are still returned, uncached
        assert encode_cached(docs, tokenizer, 64, tmp_path / "c") == encode_documents(docs, tokenizer, 64)
    else:
        with pytest.raises(RuntimeError, match="on purpose"):
            encode_cached(docs, tokenizer, 64, tmp_path / "c")
    assert _cache_entries(tmp_path / "c") == []
