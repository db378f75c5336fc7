"""subset: head and seeded random selection on real text, filters, counts, alignment errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline_tasks.subset import SubsetConfig, subset
from pipeline_tasks.textio import MisalignedError


def _lines(p):
    return p.read_text("utf-8").splitlines()


def test_head_is_the_first_n_pairs(sample_dir, tmp_path):
    r = subset(str(sample_dir / "train.en"), str(sample_dir / "train.de"), tmp_path / "s.en", tmp_path / "s.de",
               SubsetConfig(size=1000))
    assert _lines(tmp_path / "s.en") == _lines(sample_dir / "train.en")[:1000]
    assert _lines(tmp_path / "s.de") == _lines(sample_dir / "train.de")[:1000]
    assert r["pairs_written"] == 1000 and r["lines_read"] == 10000   # the rest was still read (alignment)


def test_random_is_seeded_aligned_and_in_corpus_order(sample_dir, tmp_path):
    en, de = _lines(sample_dir / "train.en"), _lines(sample_dir / "train.de")
    corpus = list(zip(en, de))
    outs = []
    for run, seed in enumerate((7, 7, 8)):
        subset(str(sample_dir / "train.en"), str(sample_dir / "train.de"), tmp_path / f"{run}.en",
               tmp_path / f"{run}.de", SubsetConfig(size=500, mode="random", seed=seed))
        got_en, got_de = _lines(tmp_path / f"{run}.en"), _lines(tmp_path / f"{run}.de")
        assert len(got_en) == len(got_de) == 500
        it = iter(corpus)
        assert all(pair in it for pair in zip(got_en, got_de))   # aligned pairs, a subsequence of the corpus
        outs.append(got_en)
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_blank_pairs_are_skipped_and_counted_and_lengths_are_the_clean_steps(tmp_path):
    (tmp_path / "a").write_text("one two\n\nw " * 1 + "\n" + " ".join(["x"] * 9) + "\nk\nshort\n", encoding="utf-8")
    (tmp_path / "b").write_text("eins zwei\nleer\n\nneun\n" + " ".join(["y"] * 5) + "\nkurz\n", encoding="utf-8")
    r = subset(str(tmp_path / "a"), str(tmp_path / "b"), tmp_path / "o.a", tmp_path / "o.b", SubsetConfig())
    # line 1 kept; 2 blank (source); 3 blank (target); 4 and 5 kept (length filters are clean's); 6 kept
    assert (r["pairs_written"], r["blank_skipped"]) == (4, 2)
    assert r["lines_examined"] == r["candidates"] + r["blank_skipped"]
    assert _lines(tmp_path / "o.a") == ["one two", " ".join(["x"] * 9), "k", "short"]


def test_misaligned_fails_even_in_head_mode(sample_dir, tmp_path):
    short = tmp_path / "short.de"
    short.write_text("\n".join(_lines(sample_dir / "train.de")[:9999]) + "\n", encoding="utf-8")
    with pytest.raises(MisalignedError, match=r"train.en has 10000 lines but .*short.de has 9999 lines"):
        subset(str(sample_dir / "train.en"), str(short), tmp_path / "o.en", tmp_path / "o.de", SubsetConfig(size=10))
    assert not (tmp_path / "o.en").exists() and not (tmp_path / "o.de").exists()
    assert not list(tmp_path.glob(".o.*"))     # no temporary leftovers


def test_no_pairs_left_is_an_error(tmp_path):
    (tmp_path / "a").write_text("\n\n", encoding="utf-8")
    (tmp_path / "b").write_text("x\ny\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no sentence pairs left"):
        subset(str(tmp_path / "a"), str(tmp_path / "b"), tmp_path / "o.a", tmp_path / "o.b", SubsetConfig())
    assert not (tmp_path / "o.a").exists()


def test_crlf_stray_cr_and_invalid_utf8(tmp_path):
    (tmp_path / "a").write_bytes(b"win\r\nstray\rcr\nbad \xff byte\n")
    (tmp_path / "b").write_bytes(b"1\n2\n3\n")
    r = subset(str(tmp_path / "a"), str(tmp_path / "b"), tmp_path / "o.a", tmp_path / "o.b", SubsetConfig())
    assert (tmp_path / "o.a").read_text("utf-8") == "win\nstray cr\nbad \ufffd byte\n"
    assert r["source_text"]["replaced_chars"] == 1 and r["source_text"]["bad_lines"] == [3]


def test_gzip_input(sample_dir, tmp_path):
    import gzip
    for lang in ("en", "de"):
        (tmp_path / f"c.{lang}.gz").write_bytes(gzip.compress((sample_dir / f"val.{lang}").read_bytes()))
    subset(str(tmp_path / "c.en.gz"), str(tmp_path / "c.de.gz"), tmp_path / "o.en", tmp_path / "o.de",
           SubsetConfig(size=5))
    assert _lines(tmp_path / "o.de") == _lines(sample_dir / "val.de")[:5]


@pytest.mark.parametrize("kw", [{"mode": "middle"}, {"size": 0}])
def test_bad_config(kw):
    with pytest.raises(ValueError):
        SubsetConfig(**kw)


def test_cli(sample_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipeline_tasks", "subset", "--source", sample_dir / "val.en",
                        "--target", sample_dir / "val.de", "--output-source", tmp_path / "o.en",
                        "--output-target", tmp_path / "o.de", "-n", "20", "--mode", "random", "--seed", "3"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pairs_written"] == 20 and len(_lines(tmp_path / "o.de")) == 20


def _run(sample_dir, out_src, out_trg, **kw):
    return subset(str(sample_dir / "val.en"), str(sample_dir / "val.de"), out_src, out_trg, SubsetConfig(size=5, **kw))


@pytest.mark.parametrize("bad", ["source", "target"])
def test_output_that_is_a_folder_fails_before_either_file_is_written(sample_dir, tmp_path, bad):
    out = {"source": tmp_path / "o.en", "target": tmp_path / "o.de"}
    out[bad].mkdir()
    other = out["target" if bad == "source" else "source"]
    with pytest.raises(IsADirectoryError, match=rf"{out[bad]}: is a folder"):
        _run(sample_dir, out["source"], out["target"])
    assert not other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [out[bad].name]   # no temporary file either


def test_output_whose_parent_is_a_file_fails_before_either_file_is_written(sample_dir, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match=rf"{tmp_path / 'f'} is not a folder"):
        _run(sample_dir, tmp_path / "o.en", tmp_path / "f" / "o.de")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_output_that_is_an_input_or_the_other_output_is_refused(sample_dir, tmp_path):
    src = tmp_path / "val.en"
    src.write_bytes((sample_dir / "val.en").read_bytes())
    with pytest.raises(ValueError, match=rf"{src}: is an input and an output"):
        subset(str(src), str(sample_dir / "val.de"), src, tmp_path / "o.de", SubsetConfig(size=5))
    assert src.read_bytes() == (sample_dir / "val.en").read_bytes()
    with pytest.raises(ValueError, match="output files must differ"):
        _run(sample_dir, tmp_path / "o", tmp_path / "o")


def test_a_failing_publish_restores_both_earlier_outputs(sample_dir, tmp_path, monkeypatch):
    """Both or neither, even when the second rename fails at the very end."""
    from pipeline_tasks import atomic

    out_en, out_de = tmp_path / "o.en", tmp_path / "o.de"
    _run(sample_dir, out_en, out_de)
    before = out_en.read_bytes(), out_de.read_bytes()
    real_rename, calls = os.rename, []

    def rename(a, b):
        calls.append(b)
        if str(b) == str(out_de) and not str(a).endswith(".old"):
            raise OSError(28, "No space left on device", str(b))
        real_rename(a, b)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(OSError, match="No space left"):
        _run(sample_dir, out_en, out_de, mode="random", seed=3)
    monkeypatch.undo()
    assert (out_en.read_bytes(), out_de.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.de", "o.en"]


def test_bom_is_not_part_of_the_first_word_and_is_reported(sample_dir, tmp_path, caplog):
    en = sample_dir / "train.en"
    (tmp_path / "bom.en").write_bytes("\ufeff".encode() + en.read_bytes())
    with caplog.at_level("INFO"):
        r = subset(str(tmp_path / "bom.en"), str(sample_dir / "train.de"), tmp_path / "o.en", tmp_path / "o.de",
                   SubsetConfig(size=3))
    first = _lines(en)[0]
    assert _lines(tmp_path / "o.en")[0] == first and not first.startswith("\ufeff")
    assert (tmp_path / "o.en").read_bytes().startswith(first.split()[0].encode())
    assert r["source_text"]["bom_stripped"] is True and r["target_text"]["bom_stripped"] is False
    assert any("bom.en" in m and "byte-order mark" in m for m in caplog.messages)
