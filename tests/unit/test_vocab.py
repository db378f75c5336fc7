"""Vocabulary contract: ids, ordering, special symbols, file format and validation errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from model import vocab
from model.vocab import VocabError


def test_prune_orders_by_count_then_token_descending():
    counts = Counter({"b": 2, "a": 2, "c": 5, "d": 1})
    v = vocab.prune(counts)
    assert list(v.items())[:4] == [("<pad>", 0), ("<unk>", 1), ("<s>", 2), ("</s>", 3)]
    assert list(v)[4:] == ["c", "b", "a", "d"]   # ties by token descending, like create_vocab_proto.py


def test_prune_limits_and_min_count():
    counts = Counter({"x": 9, "y": 3, "z": 1, "w": 1})
    assert list(vocab.prune(counts, num_words=2))[4:] == ["x", "y"]
    assert list(vocab.prune(counts, min_count=2))[4:] == ["x", "y"]
    with pytest.raises(ValueError):
        vocab.prune(counts, min_count=0)


def test_special_spellings_never_become_entries():
    v = vocab.prune(Counter({"<s>": 100, "hello": 1}))
    assert v["<s>"] == 2 and len(v) == 5


def test_save_and_load_round_trip_utf8(tmp_path):
    v = vocab.prune(Counter({"Größe": 3, "straße": 2, "日本": 1}))
    p = tmp_path / "v.json"
    vocab.save(v, p)
    text = p.read_text(encoding="utf-8")
    assert "Größe" in text and "\\u" not in text      # non-ASCII kept as is, like AWS's script
    assert vocab.load(p) == v
    assert list(json.loads(text).values()) == list(range(len(v)))   # written in id order


@pytest.mark.parametrize("data,message", [
    ({"<unk>": 1, "<s>": 2, "</s>": 3, "a": 4}, "'<pad>' is missing"),
    ({"<pad>": 0, "<unk>": 2, "<s>": 1, "</s>": 3}, "'<unk>' has id 2, expected 1"),
    ({"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, "a": 5}, "id 4 is missing"),
    ({"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, "a": 3}, "id 3 is used twice"),
    ({"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, "a": "4"}, "ids must be non-negative integers"),
    (["<pad>"], "expected a JSON object"),
])
def test_invalid_vocab_files_are_named(tmp_path, data, message):
    p = tmp_path / "vocab.src.json"
    p.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(VocabError) as e:
        vocab.load(p)
    assert str(p) in str(e.value) and message in str(e.value)


def test_broken_json_and_missing_file(tmp_path):
    p = tmp_path / "v.json"
    p.write_text('{"<pad>": 0,', encoding="utf-8")
    with pytest.raises(VocabError, match="invalid JSON at line 1"):
        vocab.load(p)
    with pytest.raises(VocabError, match="not found"):
        vocab.load(tmp_path / "nope.json")


def test_reverse():
    v = vocab.prune(Counter({"a": 1}))
    assert vocab.reverse(v) == ["<pad>", "<unk>", "<s>", "</s>", "a"]
