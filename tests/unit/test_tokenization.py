"""tokenize: whitespace and Moses modes, SentencePiece BPE learned on train only, and the inverse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu

from pipeline_tasks.tokenization import Tokenizer, TokenizerConfig, tokenize_corpus
from tests.conftest import NEWSTEST, head_lines


@pytest.fixture
def raw_corpus(tmp_path: Path, sample_dir: Path) -> dict[str, tuple[str, str]]:
    """Raw (untokenized) text: the official newstest2017 en-de fixture, plus sample text."""
    train_en = head_lines(NEWSTEST / "newstest2017.en-de.en", tmp_path / "raw/train.en", 150)
    train_de = head_lines(NEWSTEST / "newstest2017.en-de.de", tmp_path / "raw/train.de", 150)
    return {"train": (str(train_en), str(train_de))}


def test_whitespace_mode_normalises_only(tmp_path):
    (tmp_path / "a").write_text("a  b\tc \n  \nd\n", encoding="utf-8")
    (tmp_path / "b").write_text("x\ny\nz\n", encoding="utf-8")
    tokenize_corpus({"train": (str(tmp_path / "a"), str(tmp_path / "b"))}, tmp_path / "o", TokenizerConfig())
    assert (tmp_path / "o/train.en").read_text("utf-8") == "a b c\n\nd\n"     # line count kept, blank kept
    assert json.loads((tmp_path / "o/tokenizer.json").read_text())["mode"] == "whitespace"


def test_moses_mode_and_detokenize_round_trip(raw_corpus, tmp_path):
    cfg = TokenizerConfig(mode="moses")
    tokenize_corpus(raw_corpus, tmp_path / "o", cfg)
    raw = Path(raw_corpus["train"][1]).read_text("utf-8").splitlines()
    tok = (tmp_path / "o/train.de").read_text("utf-8").splitlines()
    assert len(tok) == len(raw)
    assert any(" ," in t for t in tok)                      # punctuation split off
    t = Tokenizer.load(tmp_path / "o")
    detok = [t.decode(x, "target") for x in tok]
    # Detokenizing our own tokenization gives back text that scores (near) perfectly against the raw text.
    assert sacrebleu.corpus_bleu(detok, [raw]).score > 95


def test_bpe_learned_on_train_only_and_applied_to_all_splits(raw_corpus, sample_dir, tmp_path):
    splits = dict(raw_corpus)
    splits["val"] = (str(head_lines(sample_dir / "val.en", tmp_path / "v.en", 40)),
                     str(head_lines(sample_dir / "val.de", tmp_path / "v.de", 40)))
    cfg = TokenizerConfig(mode="moses", bpe_vocab_size=300)
    rep = tokenize_corpus(splits, tmp_path / "o", cfg)
    assert (tmp_path / "o/spm.en.model").is_file() and (tmp_path / "o/spm.de.model").is_file()
    assert not (tmp_path / "o/.pretok").exists()
    assert set(rep["splits"]) == {"train", "val"}
    val = (tmp_path / "o/val.en").read_text("utf-8").splitlines()
    assert len(val) == 40 and all(p for line in val for p in line.split())
    assert any("▁" in line for line in val)
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "o/spm.en.model"))
    assert sp.get_piece_size() <= 300
    t = Tokenizer.load(tmp_path / "o")
    raw_line = Path(splits["train"][0]).read_text("utf-8").splitlines()[3]
    assert t.decode(t.encode(raw_line, "source"), "source") == raw_line


def test_joint_bpe(raw_corpus, tmp_path):
    tokenize_corpus(raw_corpus, tmp_path / "o", TokenizerConfig(bpe_vocab_size=200, bpe_joint=True))
    assert (tmp_path / "o/spm.joint.model").is_file() and not (tmp_path / "o/spm.en.model").exists()


def test_bpe_needs_train_split(tmp_path, raw_corpus):
    with pytest.raises(ValueError, match="train"):
        tokenize_corpus({"val": raw_corpus["train"]}, tmp_path / "o", TokenizerConfig(bpe_vocab_size=100))


def test_failure_leaves_no_output(tmp_path, raw_corpus):
    with pytest.raises(FileNotFoundError, match=r"missing\.de"):
        tokenize_corpus({"train": raw_corpus["train"], "test": (raw_corpus["train"][0], str(tmp_path / "missing.de"))},
                        tmp_path / "o", TokenizerConfig())
    assert not (tmp_path / "o").exists()


def test_tokenizer_json_unknown_field(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"mode": "moses", "colour": "blue"}))
    with pytest.raises(ValueError, match=r"unknown field.*colour"):
        Tokenizer.load(tmp_path)


@pytest.mark.parametrize("kw", [{"mode": "bert"}, {"detokenizer": "x"}, {"bpe_vocab_size": 2}])
def test_bad_config(kw):
    with pytest.raises(ValueError):
        TokenizerConfig(**kw)


def test_cli_tokenize_and_detokenize(raw_corpus, tmp_path):
    s, t = raw_corpus["train"]
    r = subprocess.run([sys.executable, "-m", "pipeline_tasks", "tokenize", "--mode", "moses", "--train-source", s,
                        "--train-target", t, "--output", tmp_path / "o"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "pipeline_tasks", "detokenize", "--tokenizer", tmp_path / "o",
                        "--input", tmp_path / "o/train.de"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 150


def test_rerun_without_bpe_leaves_no_subword_model_of_the_earlier_output(raw_corpus, tmp_path):
    out = tmp_path / "o"
    tokenize_corpus(raw_corpus, out, TokenizerConfig(mode="moses", bpe_vocab_size=200))
    assert (out / "spm.en.model").is_file()
    tokenize_corpus(raw_corpus, out, TokenizerConfig(mode="moses"))
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "train.de", "train.en"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "raw"]


def test_output_that_is_a_file_fails_before_tokenizing(raw_corpus, tmp_path, monkeypatch):
    from pipeline_tasks import tokenization

    out = tmp_path / "o"
    out.write_text("not a folder\n")
    monkeypatch.setattr(tokenization, "_pretokenize_file", lambda *a: pytest.fail("tokenized before checking"))
    with pytest.raises(NotADirectoryError, match=rf"{out}.*is a file"):
        tokenize_corpus(raw_corpus, out, TokenizerConfig())
    assert out.read_text() == "not a folder\n"


def test_bom_is_not_part_of_the_first_token(raw_corpus, tmp_path):
    src, trg = raw_corpus["train"]
    bom_src = tmp_path / "bom.en"
    bom_src.write_bytes("\ufeff".encode() + Path(src).read_bytes())
    rep = tokenize_corpus({"train": (str(bom_src), trg)}, tmp_path / "o", TokenizerConfig(mode="moses"))
    first_raw = Path(src).read_text("utf-8").splitlines()[0]
    first_tok = (tmp_path / "o/train.en").read_text("utf-8").splitlines()[0].split()[0]
    assert first_tok == first_raw.split()[0] and "\ufeff" not in first_tok
    assert rep["splits"]["train"]["en"]["bom_stripped"] is True
    assert rep["splits"]["train"]["de"]["bom_stripped"] is False
