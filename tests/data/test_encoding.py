"""Tokenisation: chunked encoding equals one call, the sentence budget, and the on-disk cache."""

from __future__ import annotations

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
