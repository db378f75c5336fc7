"""Several corpora per run: the corpus param's list form, and the training mix the subset step makes of it
(weights as upsampling factors, or shares of the mix; reproducible by seed; counted per source), on real
sample text."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from pipeline_tasks.pipeline import CorpusConfig, CorpusSource, corpus_sources
from pipeline_tasks.subset import MixSource, SubsetConfig, mix, mix_counts
from tests.conftest import SAMPLE


@pytest.fixture
def corpora(tmp_path: Path) -> dict[str, MixSource]:
    """Three disjoint slices of the sample's training split: 3,000, 1,000 and 500 real pairs."""
    out = {}
    lines = {lang: (SAMPLE / f"train.{lang}").read_text(encoding="utf-8").splitlines() for lang in ("en", "de")}
    for name, (a, b) in {"big": (0, 3000), "mid": (3000, 4000), "small": (4000, 4500)}.items():
        for lang in ("en", "de"):
            (tmp_path / f"{name}.{lang}").write_text("\n".join(lines[lang][a:b]) + "\n", encoding="utf-8")
        out[name] = MixSource(name, str(tmp_path / f"{name}.en"), str(tmp_path / f"{name}.de"))
    return out


def written(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_weights_are_upsampling_factors(corpora, tmp_path):
    sources = [corpora["big"], MixSource("small", corpora["small"].source, corpora["small"].target, weight=2.5)]
    report = mix(sources, tmp_path / "out.en", tmp_path / "out.de", SubsetConfig(mode="random", seed=3))
    assert [(s["name"], s["pairs_available"], s["pairs_written"]) for s in report["sources"]] == [
        ("big", 3000, 3000), ("small", 500, 1250)]
    assert report["pairs_written"] == 4250 and report["sources"][1]["share_of_mix"] == round(1250 / 4250, 6)
    en, de = written(tmp_path / "out.en"), written(tmp_path / "out.de")
    assert len(en) == len(de) == 4250
    # every small pair twice, half of them a third time; the pairs stay aligned
    small = list(zip(written(Path(corpora["small"].source)), written(Path(corpora["small"].target)), strict=True))
    seen, twice = Counter(zip(en[3000:], de[3000:])), Counter(small * 2)
    extra = seen - twice  # (what is left after every pair twice)
    assert not twice - seen and sum(extra.values()) == 250 and not extra - Counter(small)
    assert en[:3000] == written(Path(corpora["big"].source))


def test_a_mix_of_a_given_size_keeps_the_weights_proportions(corpora, tmp_path):
    sources = [corpora["big"], MixSource("mid", corpora["mid"].source, corpora["mid"].target, weight=3.0)]
    report = mix(sources, tmp_path / "a.en", tmp_path / "a.de", SubsetConfig(size=1200, mode="random", seed=5))
    # big 3000 x 1 : mid 1000 x 3 = 1:1, so 600 + 600
    assert [s["pairs_written"] for s in report["sources"]] == [600, 600]
    again = mix(sources, tmp_path / "b.en", tmp_path / "b.de", SubsetConfig(size=1200, mode="random", seed=5))
    assert again == report
    assert (tmp_path / "a.en").read_bytes() == (tmp_path / "b.en").read_bytes()  # same seed, same pairs
    other = mix(sources, tmp_path / "c.en", tmp_path / "c.de", SubsetConfig(size=1200, mode="random", seed=6))
    assert [s["pairs_written"] for s in other["sources"]] == [600, 600]
    assert (tmp_path / "a.en").read_bytes() != (tmp_path / "c.en").read_bytes()
    head = mix(sources, tmp_path / "h.en", tmp_path / "h.de", SubsetConfig(size=1200))
    assert written(tmp_path / "h.en")[:600] == written(Path(corpora["big"].source))[:600]
    assert head["pairs_written"] == 1200


def test_shares_split_the_mix(corpora, tmp_path):
    sources = [MixSource(s.name, s.source, s.target, share=x) for s, x in
               ((corpora["big"], 0.5), (corpora["mid"], 0.3), (corpora["small"], 0.2))]
    # no size: the largest mix that repeats no pair: small's 500 pairs are its 20 % of 2,500
    report = mix(sources, tmp_path / "s.en", tmp_path / "s.de", SubsetConfig(mode="random", seed=1))
    assert [s["pairs_written"] for s in report["sources"]] == [1250, 750, 500]
    sized = mix(sources, tmp_path / "t.en", tmp_path / "t.de", SubsetConfig(size=1001, mode="random", seed=1))
    assert [s["pairs_written"] for s in sized["sources"]] == [501, 300, 200]  # 500.5, 300.3, 200.2: largest remainder


def test_mix_counts():
    src = [MixSource("a", "a.en", "a.de"), MixSource("b", "b.en", "b.de", weight=0.5)]
    assert mix_counts([1000, 400], src, None) == [1000, 200]
    assert mix_counts([1000, 400], src, 600) == [500, 100]
    assert sum(mix_counts([7, 3, 5], [MixSource(str(i), "x", "y") for i in range(3)], 10)) == 10
    with pytest.raises(ValueError, match=r"the shares add up to 0\.9, not 1"):
        mix_counts([10, 10], [MixSource("a", "x", "y", share=0.5), MixSource("b", "x", "y", share=0.4)], None)
    with pytest.raises(ValueError, match="give a share for every source"):
        mix_counts([10, 10], [MixSource("a", "x", "y", share=0.5), MixSource("b", "x", "y")], None)
    with pytest.raises(ValueError, match="weight must be > 0"):
        MixSource("a", "x", "y", weight=0)


def test_the_corpus_param_names_one_source_or_a_list():
    assert corpus_sources("wmt-toy-ende-sample") == [CorpusSource("wmt-toy-ende-sample", {},
                                                                  name="wmt-toy-ende-sample")]
    mixed = corpus_sources(["europarl-v7-de-en", {"source": "s3://b/cc/", "weight": 0.5, "name": "cc",
                                                  "layout": {"train": "cc.{lang}"}}])
    assert [(s.name, s.weight, s.files()) for s in mixed] == [
        ("europarl-v7-de-en", 1.0, {"train": "europarl-v7.de-en.{lang}"}), ("cc", 0.5, {
            "train": "cc.{lang}", "val": "val.{lang}", "test": "test.{lang}"})]
    assert CorpusConfig(["a", "b"]).is_mix and not CorpusConfig("a").is_mix
    for bad, needle in (([], "non-empty list"), ([{"source": "a", "wieght": 2}], "unknown key(s) wieght"),
                        ([{"source": "a", "weight": -1}], "corpus a: weight must be > 0"),
                        ([{"source": "a", "weight": "2"}], "corpus[0]: weight must be a number"),
                        (["/x/train", "/y/train"], "two sources have the same name"),
                        ([{"source": "a", "share": 0.5}, "b"], "give a share for every source")):
        with pytest.raises(ValueError, match=re.escape(needle)):
            corpus_sources(bad)
