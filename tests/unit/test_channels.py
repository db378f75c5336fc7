"""The recordio step: same vocabularies and records as the create_vocab_proto.py logic, in order,
on real text; bad input fails clearly and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import aws_baseline
from model import recordio, vocab
from model.vocab import VocabError
from pipeline_tasks import channels
from pipeline_tasks.channels import VocabConfig, make_channels
from pipeline_tasks.textio import MisalignedError


def _pairs(p: Path):
    return list(recordio.read_pairs(p))


def _reference(c: dict[str, Path], tmp: Path) -> Path:
    out = tmp / "reference"
    aws_baseline.make_channels(str(c["train.en"]), str(c["train.de"]), str(c["val.en"]), str(c["val.de"]), str(out))
    return out


def _ours(c: dict[str, Path], out: Path, **kw) -> dict:
    return make_channels(str(c["train.en"]), str(c["train.de"]), str(c["val.en"]), str(c["val.de"]), out, **kw)


@pytest.mark.parametrize("workers", [1, 2])
def test_same_vocab_and_records_as_reference(small_corpus, tmp_path, workers, monkeypatch):
    monkeypatch.setattr(channels, "_PARALLEL_MIN_BYTES", 0)  # force worker processes even on small input
    ref = _reference(small_corpus, tmp_path)
    report = _ours(small_corpus, tmp_path / "ours", workers=workers)
    for name in ("vocab.src.json", "vocab.trg.json"):
        assert json.loads((tmp_path / "ours/vocab" / name).read_text("utf-8")) == \
            json.loads((ref / "vocab" / name).read_text("utf-8"))
    assert _pairs(tmp_path / "ours/train/train.rec") == _pairs(ref / "train/train.rec")
    assert _pairs(tmp_path / "ours/validation/val.rec") == _pairs(ref / "validation/val.rec")
    assert report["train"]["records"] == 300 and report["validation"]["records"] == 100
    assert not (tmp_path / "ours/.scratch").exists()


def test_records_follow_input_order(small_corpus, tmp_path):
    _ours(small_corpus, tmp_path / "o")
    v = vocab.reverse(vocab.load(tmp_path / "o/vocab/vocab.src.json"))
    lines = small_corpus["train.en"].read_text("utf-8").splitlines()
    decoded = [" ".join(v[i] for i in src) for src, _ in _pairs(tmp_path / "o/train/train.rec")]
    assert decoded == [" ".join(line.split()) for line in lines]


def test_joint_vocab_and_limits(small_corpus, tmp_path):
    _ours(small_corpus, tmp_path / "j", vocab_cfg=VocabConfig(joint=True, num_words_source=500))
    s = vocab.load(tmp_path / "j/vocab/vocab.src.json")
    assert s == vocab.load(tmp_path / "j/vocab/vocab.trg.json") and len(s) == 504
    ids = {i for src, trg in _pairs(tmp_path / "j/train/train.rec") for i in src + trg}
    assert max(ids) < 504 and vocab.UNK_ID in ids


def test_min_count_maps_rare_tokens_to_unk(small_corpus, tmp_path):
    report = _ours(small_corpus, tmp_path / "m", vocab_cfg=VocabConfig(min_count_source=2, min_count_target=3))
    ref_counts = aws_baseline.count(str(small_corpus["train.en"]))
    assert report["vocab"]["source_size"] == 4 + sum(1 for c in ref_counts.values() if c >= 2)
    assert report["train"]["source_unk_tokens"] == sum(c for c in ref_counts.values() if c < 2)


def test_reuse_existing_vocab(small_corpus, tmp_path):
    _ours(small_corpus, tmp_path / "first")
    src_json = str(tmp_path / "first/vocab/vocab.src.json")
    trg_json = str(tmp_path / "first/vocab/vocab.trg.json")
    # A different training file with the reused vocabulary: ids must come from the given files.
    other = dict(small_corpus, **{"train.en": small_corpus["val.en"], "train.de": small_corpus["val.de"]})
    _ours(other, tmp_path / "second", vocab_cfg=VocabConfig(source_json=src_json, target_json=trg_json))
    assert vocab.load(tmp_path / "second/vocab/vocab.src.json") == vocab.load(src_json)
    assert _pairs(tmp_path / "second/train/train.rec") == _pairs(tmp_path / "first/validation/val.rec")


def test_vocab_without_specials_is_refused(small_corpus, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"the": 0, "a": 1}), encoding="utf-8")
    with pytest.raises(VocabError, match=r"bad\.json.*'<pad>' is missing"):
        _ours(small_corpus, tmp_path / "out", vocab_cfg=VocabConfig(source_json=str(bad)))
    assert not (tmp_path / "out").exists()


def test_misaligned_files_name_both_files_and_counts(small_corpus, tmp_path):
    short = tmp_path / "short.de"
    short.write_bytes(b"".join(small_corpus["train.de"].read_bytes().splitlines(keepends=True)[:299]))
    c = dict(small_corpus, **{"train.de": short})
    with pytest.raises(MisalignedError) as e:
        _ours(c, tmp_path / "out")
    msg = str(e.value)
    assert str(c["train.en"]) in msg and "300 lines" in msg and str(short) in msg and "299 lines" in msg
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_empty_training_file_fails_and_leaves_nothing(small_corpus, tmp_path):
    for lang in ("en", "de"):
        (tmp_path / f"empty.{lang}").write_bytes(b"")
    c = dict(small_corpus, **{"train.en": tmp_path / "empty.en", "train.de": tmp_path / "empty.de"})
    with pytest.raises(ValueError, match="train: no sentence pairs"):
        _ours(c, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_blank_pairs_skipped_and_counted(tmp_path):
    (tmp_path / "s").write_text("a b\n\nc\n  \nd e f\n", encoding="utf-8")
    (tmp_path / "t").write_text("x\ny\n\nz\nw\n", encoding="utf-8")
    r = make_channels(str(tmp_path / "s"), str(tmp_path / "t"), str(tmp_path / "s"), str(tmp_path / "t"),
                      tmp_path / "o")
    assert r["train"]["lines"] == 5 and r["train"]["records"] == 2 and r["train"]["blank_pairs_skipped"] == 3
    v = vocab.reverse(vocab.load(tmp_path / "o/vocab/vocab.src.json"))
    assert [[v[i] for i in s] for s, _ in _pairs(tmp_path / "o/train/train.rec")] == [["a", "b"], ["d", "e", "f"]]


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    (tmp_path / "s").write_bytes(b"caf\xe9 ok\nfine\n\xff\xfe x\n")
    (tmp_path / "t").write_bytes(b"a\nb\nc\n")
    r = make_channels(str(tmp_path / "s"), str(tmp_path / "t"), str(tmp_path / "s"), str(tmp_path / "t"),
                      tmp_path / "o")
    assert r["train"]["records"] == 3
    assert r["train"]["source_text"]["replaced_chars"] == 3
    assert r["train"]["source_text"]["bad_lines"] == [1, 3]
    assert "caf\ufffd" in vocab.load(tmp_path / "o/vocab/vocab.src.json")


def test_one_megabyte_line(tmp_path):
    words = [f"w{i % 5000}" for i in range(200_000)]
    line = " ".join(words)
    assert len(line) > 1_000_000
    (tmp_path / "s").write_text(f"short line\n{line}\n", encoding="utf-8")
    (tmp_path / "t").write_text("kurz\nlang\n", encoding="utf-8")
    make_channels(str(tmp_path / "s"), str(tmp_path / "t"), str(tmp_path / "s"), str(tmp_path / "t"), tmp_path / "o")
    v = vocab.reverse(vocab.load(tmp_path / "o/vocab/vocab.src.json"))
    pairs = _pairs(tmp_path / "o/train/train.rec")
    assert [v[i] for i in pairs[1][0]] == words


def test_unicode_whitespace_and_nul_and_specials(tmp_path):
    """Tokens are str.split() of the line, including exotic whitespace; NUL and <s> are ordinary text."""
    src = "a\u00a0b\u3000c\x1cd\n<s> x\x00y \x00\ne\u2028f\r\n"
    (tmp_path / "s").write_text(src, encoding="utf-8")
    (tmp_path / "t").write_text("1\n2\n3\n", encoding="utf-8")
    make_channels(str(tmp_path / "s"), str(tmp_path / "t"), str(tmp_path / "s"), str(tmp_path / "t"), tmp_path / "o")
    v = vocab.load(tmp_path / "o/vocab/vocab.src.json")
    inv = vocab.reverse(v)
    got = [[inv[i] for i in s] for s, _ in _pairs(tmp_path / "o/train/train.rec")]
    assert got == [line.split() for line in src.split("\n")[:3]]
    assert "<s>" in v and v["<s>"] == 2 and "x\x00y" in v


def test_extra_whitespace_list_is_complete():
    every = {chr(i) for i in range(0x110000) if chr(i).isspace()}
    ascii_ws = set(" \t\n\r\x0b\x0c")   # what bytes.split() handles itself
    assert every - ascii_ws == set(channels._EXTRA_WHITESPACE)


def test_rerun_replaces_output_atomically(small_corpus, tmp_path):
    _ours(small_corpus, tmp_path / "o")
    first = (tmp_path / "o/train/train.rec").read_bytes()
    _ours(small_corpus, tmp_path / "o", vocab_cfg=VocabConfig(num_words_source=10))
    assert (tmp_path / "o/train/train.rec").read_bytes() != first
    assert len(vocab.load(tmp_path / "o/vocab/vocab.src.json")) == 14


def test_cli_recordio_and_inspect(small_corpus, tmp_path):
    c = small_corpus
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "pipeline_tasks", "recordio", "--train-source", c["train.en"],
                        "--train-target", c["train.de"], "--val-source", c["val.en"], "--val-target", c["val.de"],
                        "--output", out, "--num-words-source", "1000"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["train"]["records"] == 300
    r = subprocess.run([sys.executable, "-m", "pipeline_tasks", "inspect", out / "validation/val.rec"],
                       capture_output=True, text=True)
    assert r.returncode == 0
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 100 and set(lines[0]) == {"source", "target"}
    assert [[d["source"], d["target"]] for d in lines] == [list(p) for p in _pairs(out / "validation/val.rec")]


def test_cli_inspect_rejects_corrupt_file(tmp_path):
    p = tmp_path / "x.rec"
    p.write_bytes(recordio.frame(recordio.encode_record([4], [5]))[:-3])
    r = subprocess.run([sys.executable, "-m", "pipeline_tasks", "inspect", p], capture_output=True, text=True)
    assert r.returncode == 1
    assert f"error: {p}: byte offset 0: truncated record" in r.stderr


def test_cli_missing_input_is_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipeline_tasks", "recordio", "--train-source", tmp_path / "nope.en",
                        "--train-target", tmp_path / "nope.de", "--val-source", tmp_path / "a",
                        "--val-target", tmp_path / "b", "--output", tmp_path / "o"], capture_output=True, text=True)
    assert r.returncode == 1 and "error: input file not found" in r.stderr and "nope.en" in r.stderr


def test_rerun_into_a_folder_with_a_stale_rec_leaves_only_the_new_records(small_corpus, tmp_path):
    """Training loads every .rec of a channel: a stale one from an earlier output would be trained on too."""
    out = tmp_path / "o"
    _ours(small_corpus, out)
    stale = out / "train" / "train-part-0.rec"   # e.g. an earlier conversion of the full corpus
    stale.write_bytes((out / "validation" / "val.rec").read_bytes())
    (out / "vocab" / "tokenizer.json").write_text("{}")   # a tokenizer the new output does not ship
    report = _ours(small_corpus, out)
    assert sorted(p.name for p in (out / "train").iterdir()) == ["train.rec"]
    assert sum(len(_pairs(p)) for p in (out / "train").glob("*.rec")) == report["train"]["records"] == 300
    assert sorted(p.name for p in (out / "vocab").iterdir()) == ["vocab.src.json", "vocab.trg.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "o"]   # no staging or old folder beside it


def test_output_folder_holding_the_input_is_refused_before_any_work(small_corpus, tmp_path):
    corpus = small_corpus["train.en"].parent
    with pytest.raises(ValueError, match=rf"{corpus}.*holds the input"):
        _ours(small_corpus, corpus)
    assert sorted(p.name for p in corpus.iterdir()) == ["train.de", "train.en", "val.de", "val.en"]


def test_bom_is_not_part_of_the_first_token(small_corpus, tmp_path):
    c = dict(small_corpus)
    c["train.en"] = tmp_path / "bom.en"
    c["train.en"].write_bytes("\ufeff".encode() + small_corpus["train.en"].read_bytes())
    report = _ours(c, tmp_path / "o")
    first = small_corpus["train.en"].read_text("utf-8").split()[0]
    v = vocab.load(tmp_path / "o/vocab/vocab.src.json")
    assert first in v and "\ufeff" + first not in v and not any(t.startswith("\ufeff") for t in v)
    inv = vocab.reverse(v)
    assert inv[_pairs(tmp_path / "o/train/train.rec")[0][0][0]] == first
    assert report["train"]["source_text"]["bom_stripped"] is True
    assert report["validation"]["source_text"]["bom_stripped"] is False
