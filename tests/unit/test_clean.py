"""The clean step (pipeline_tasks/clean.py): each filter on crafted pairs, the settings, and a noisy corpus
made from the bundled sample's real text with planted noise of each kind the filters are for."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from pipeline_tasks.clean import FILTERS, CleanConfig, clean, normalized, pair_verdict, script_share
from tests.conftest import SAMPLE

GOOD = ("The committee adopted the report on Tuesday .", "Der Ausschuss hat den Bericht am Dienstag angenommen .")


@pytest.mark.parametrize("source,target,verdict", [
    (GOOD[0], GOOD[1], None),
    ("It is Parliament &apos;s right , he said &quot; today &quot; .", "Es ist das Recht des Parlaments .", None),
    ("Mannheim , 17 July 2007 \x96 CropEnergies AG", "Mannheim , 17. Juli 2007 \x96 CropEnergies AG", "bad_characters"),
    ("The milit\ufffdry aviation sector", "Der milit\ufffdrische Luftfahrtbereich", "bad_characters"),
    ('<a href="/home">Home</a> page', "Startseite", "markup"),
    ("See www.example.com/page.html", "http://example.com/seite.html", "url_only"),
    ("info@example.com", "Schreiben Sie !", "url_only"),  # (one token against 6 would fall to the ratio first)
    ("Hotel Adlon Kempinski Berlin", "Hotel Adlon Kempinski Berlin", "copy"),
    ("Hotel Adlon , Berlin", "hotel adlon berlin", "copy"),
    ("В 54 садибах розміщено 124 пам &apos; ятки .", "In den 54 Häusern befinden sich 124 Denkmäler .", "script"),
    ("Il est exploité depuis 43 ans par la famille Janinet et Fils .", GOOD[1], "language"),
    (GOOD[0], "Il est exploité depuis 43 ans par la famille Janinet et Fils .", "language"),
    ("Thank you .", "Danke schön .", None),  # too short to tell the language: kept
    (" ".join(["word"] * 101), " ".join(["Wort"] * 100), "too_long"),
    ("Yes , the Commission will .", " ".join(["Ja"] * 25), "ratio"),  # 6 tokens against 25
])
def test_each_filter_on_a_crafted_pair(source, target, verdict):
    assert pair_verdict(source, target, "en", "de", CleanConfig()) == verdict


def test_the_length_filters_count_whitespace_tokens_as_subset_did():
    """too_short, too_long and ratio (they were the subset step's filters): tokens are str.split()'s, so any
    Unicode space separates them, and the ratio is longer / shorter side."""
    cfg = CleanConfig.from_dict({"min_len": 2, "max_len": 5, "max_ratio": 2, "language": False})
    for source, target, verdict in [
        ("one", "zwei drei", "too_short"), ("a b c d e", "v w x y z", None), ("a b c d e f", "eins zwei", "too_long"),
        ("a\u3000b\u00a0c\td", "w x", None), ("a b c d e", "w x", "ratio"), ("a b c d", "x y", None),
        ("  spaced   out  words  ", "drei Wörter hier", None)]:
        assert pair_verdict(source, target, "en", "de", cfg) == verdict, (source, target)
    off = CleanConfig.from_dict({"too_long": False, "ratio": False, "language": False})
    assert pair_verdict(" ".join(["w"] * 500), "x", "en", "de", off) is None
    assert pair_verdict(" ".join(["w"] * 500), "x", "en", "de",
                        CleanConfig.from_dict({"max_len": None, "max_ratio": None, "language": False})) is None
    with pytest.raises(ValueError, match="max_ratio must be >= 1"):
        CleanConfig(max_ratio=0.5)
    with pytest.raises(ValueError, match="min_len must be >= 1 and max_len >= min_len"):
        CleanConfig(min_len=5, max_len=3)


def test_the_settings_switch_filters_off_and_are_checked():
    cfg = CleanConfig.from_dict({"language": False, "copy": False, "normalize": ["case"], "min_script_share": 0.8})
    assert "language" not in cfg.filters and "copy" not in cfg.filters and cfg.normalize == ("case",)
    assert pair_verdict("Il est exploité depuis 43 ans par la famille .", GOOD[1], "en", "de", cfg) is None
    assert CleanConfig.from_dict(None).filters == FILTERS
    with pytest.raises(ValueError, match="cleaning: unknown key"):
        CleanConfig.from_dict({"langid": False})
    with pytest.raises(ValueError, match="unknown normalisation"):
        CleanConfig.from_dict({"normalize": ["accents"]})
    assert normalized(" Hotel  Adlon, 2009! ", ("case", "whitespace", "punctuation", "digits")) == "hotel adlon 0000"
    assert script_share("Крім того", "CYRILLIC") == 1.0 and script_share("12 , .", "LATIN") == 1.0


def test_duplicates_are_found_by_digest_and_reported_with_examples(tmp_path):
    src, trg = tmp_path / "in.en", tmp_path / "in.de"
    src.write_text(f"{GOOD[0]}\n{GOOD[0]}\nThe Committee adopted the report on Tuesday!\nHello there , friend .\n")
    trg.write_text(f"{GOOD[1]}\n{GOOD[1]}\nDer Ausschuss hat den Bericht am Dienstag angenommen!\nHallo , Freund .\n")
    report = clean(str(src), str(trg), tmp_path / "out.en", tmp_path / "out.de", "en", "de", workers=1)
    assert report["pairs_in"] == 4 and report["pairs_out"] == 2
    assert report["dropped"]["duplicate"] == 1 and report["dropped"]["near_duplicate"] == 1
    assert report["examples"]["duplicate"] == [[GOOD[0], GOOD[1]]]
    assert (tmp_path / "out.en").read_text().splitlines() == [GOOD[0], "Hello there , friend ."]
    flagged = clean(str(src), str(trg), tmp_path / "all.en", tmp_path / "all.de", "en", "de", workers=1,
                    keep_all=True)
    assert flagged["dropped"]["duplicate"] == 1 and (tmp_path / "all.en").read_text() == src.read_text()
    off = clean(str(src), str(trg), tmp_path / "off.en", tmp_path / "off.de", "en", "de",
                CleanConfig(enabled=False), workers=1)
    assert off["pairs_out"] == 4 and sum(off["dropped"].values()) == 0


def test_planted_noise_is_removed_and_real_pairs_are_kept(tmp_path):
    """Real pairs of the bundled sample (those the filters keep, at least 30 characters a side so that a
    swapped pair is long enough to identify) with 100 planted pairs of each kind of noise, shuffled."""
    en = (SAMPLE / "train.en").read_text(encoding="utf-8").splitlines()
    de = (SAMPLE / "train.de").read_text(encoding="utf-8").splitlines()
    base_src, base_trg = tmp_path / "base.en", tmp_path / "base.de"
    base_src.write_text("\n".join(en[:4000]) + "\n", encoding="utf-8")
    base_trg.write_text("\n".join(de[:4000]) + "\n", encoding="utf-8")
    clean(str(base_src), str(base_trg), tmp_path / "kept.en", tmp_path / "kept.de", "en", "de", workers=1)
    kept = [(s, t) for s, t in zip((tmp_path / "kept.en").read_text(encoding="utf-8").splitlines(),
                                   (tmp_path / "kept.de").read_text(encoding="utf-8").splitlines(), strict=True)
            if len(s) >= 30 and len(t) >= 30]
    rng = random.Random(7)
    real, donors = kept[:3000], kept[3000:]
    originals = rng.sample(real, 100)
    planted = {
        "duplicate": [rng.choice(real) for _ in range(100)],
        "near_duplicate": [(s.upper().replace(" .", "!"), t.upper()) for s, t in originals],
        "copy": [(s, s) for s, _ in donors[:100]],
        "swapped": [(t, s) for s, t in donors[100:200]],
        "markup": [(f"<p>{s}</p>", t) for s, t in donors[200:300]],
        "url_only": [(s, f"http://www.example.com/{i}/index.html") for i, (s, _) in enumerate(donors[300:400])],
        "bad_characters": [(s.replace(" ", " \x07 ", 1), t) for s, t in donors[400:500]],
    }
    lines = [(s, t, "real") for s, t in real] + [(s, t, kind) for kind, ps in planted.items() for s, t in ps]
    rng.shuffle(lines)
    src, trg = tmp_path / "noisy.en", tmp_path / "noisy.de"
    src.write_text("".join(s + "\n" for s, _, _ in lines), encoding="utf-8")
    trg.write_text("".join(t + "\n" for _, t, _ in lines), encoding="utf-8")
    report = clean(str(src), str(trg), tmp_path / "out.en", tmp_path / "out.de", "en", "de", workers=2)
    out = set(zip((tmp_path / "out.en").read_text(encoding="utf-8").splitlines(),
                  (tmp_path / "out.de").read_text(encoding="utf-8").splitlines(), strict=True))
    real_set = set(real)
    # Of a pair and its (near) duplicate, whichever comes first is kept: a planted one survives only if both do.
    near = dict(zip(planted["near_duplicate"], originals, strict=True))
    for kind, pairs in planted.items():
        if kind == "duplicate":
            survivors = 0  # identical to a real pair: one of the two is all that can be left
        elif kind == "near_duplicate":
            survivors = sum(1 for p in pairs if p in out and near[p] in out)
        else:
            survivors = sum(1 for p in pairs if p in out)
        assert survivors <= 5, (kind, survivors)  # at least 95 % of each kind removed
    assert report["dropped"]["duplicate"] >= 95
    replaced = {near[p] for p in planted["near_duplicate"] if p in out}  # its near duplicate came first
    lost = len(real_set - out - replaced)
    assert lost / len(real_set) < 0.01, lost  # under 1 % of the real pairs
    assert report["pairs_in"] == len(lines) and report["dropped"]["markup"] >= 95
    assert json.dumps(report)  # the report is JSON as published


def test_the_command_line_cleans_a_pair_of_files_and_names_a_missing_one(tmp_path):
    import subprocess
    import sys

    src, trg = tmp_path / "in.en", tmp_path / "in.de"
    src.write_text(f"{GOOD[0]}\n{GOOD[0]}\nHotel Adlon Berlin\n")
    trg.write_text(f"{GOOD[1]}\n{GOOD[1]}\nHotel Adlon Berlin\n")
    args = [sys.executable, "-m", "pipeline_tasks", "-q", "clean", "--source", str(src), "--target", str(trg),
            "--output-source", str(tmp_path / "out.en"), "--output-target", str(tmp_path / "out.de"),
            "--source-lang", "en", "--target-lang", "de", "--off", "copy"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["pairs_out"] == 2 and report["dropped"]["duplicate"] == 1
    assert "copy" not in report["config"]["filters"]
    missing = subprocess.run([*args[:6], str(tmp_path / "nope.en"), *args[7:]], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode != 0 and f"input file not found: {tmp_path / 'nope.en'}" in missing.stderr
    assert "Traceback" not in missing.stderr


# --- the batched step against the one it replaced (benchmarks/clean_baseline.py) -----------------------------

MIXED = [
    "", " ", "123 , . !", "Крім того", "Der Ausschuss ( Россия ) tagte .", "Η Ελλάδα , Greece",
    "日本語 と English", "한국어 텍스트 Hangul", "العربية and English", "עברית text", "हिन्दी पाठ",
    "e\u0301te\u0301 ǅemal ǈ ǋ", "ｆｕｌｌ ｗｉｄｔｈ",
    "ʰʲ modifier ˆ letters", "𝐌𝐚𝐭𝐡 𝔉𝔯𝔞𝔨𝔱𝔲𝔯", "emoji 😀 🇩🇪 text", "\ufffd\x07\t\r\x85\u2028", "ß ẞ ﬁ ŉ İ ı", "Ⅻ ½ ² ٣ ४",
]


def _real_lines() -> list[str]:
    from tests.conftest import NEWSTEST

    return ((SAMPLE / "train.en").read_text(encoding="utf-8").splitlines()[:1500]
            + (SAMPLE / "train.de").read_text(encoding="utf-8").splitlines()[:1500]
            + (NEWSTEST / "newstest2017.en-de.de").read_text(encoding="utf-8").splitlines())


def _code_point_lines(width: int) -> list[str]:
    """Every code point but '\\n' (no line holds one), `width` consecutive ones a line."""
    cps = [cp for cp in range(0x110000) if cp != 0x0A]
    return ["".join(map(chr, cps[i:i + width])) for i in range(0, len(cps), width)]


def test_script_share_is_the_old_functions_on_real_text_and_on_every_code_point():
    from benchmarks import clean_baseline as old
    from pipeline_tasks.clean import SCRIPTS
    from pipeline_tasks.clean_filters import Lines

    lines = _real_lines() + MIXED
    for script in sorted(set(SCRIPTS.values())):
        new_shares = Lines(lines).script_shares(script).tolist()
        assert new_shares == [old.script_share(t, script) for t in lines], script
        assert [script_share(t, script) for t in MIXED] == [old.script_share(t, script) for t in MIXED]
    # Each code point alone: 1.0 (not a letter), 1.0 (a letter of the script) or 0.0 (another script's).
    singles = [chr(cp) for cp in range(0x110000)]
    latin = Lines(singles).script_shares("LATIN")
    assert latin.tolist() == [old.script_share(ch, "LATIN") for ch in singles]
    kinds = [old._script(ch) if ch.isalpha() else None for ch in singles]  # the old function's two questions
    for script in sorted(set(SCRIPTS.values()) | {"MODIFIER", "MATHEMATICAL", "NOSUCHSCRIPT"}):
        want = np.array([1.0 if k is None or k == script else 0.0 for k in kinds])
        assert np.array_equal(Lines(singles).script_shares(script), want), script
    # Runs of consecutive code points: letters of many scripts and everything else, mixed in one line.
    runs = _code_point_lines(97)
    for script in ("LATIN", "CJK", "CYRILLIC"):
        assert Lines(runs).script_shares(script).tolist() == [old.script_share(t, script) for t in runs], script


def test_normalized_lines_is_the_old_normalized_line_by_line():
    from itertools import combinations

    from benchmarks import clean_baseline as old
    from pipeline_tasks.clean import NORMALIZATIONS
    from pipeline_tasks.clean_filters import normalized_lines

    edge = ["", " ", "   ", " a ", "a  b", "\t a\r\x0b\x0cb \x1c\x1d\x1e\x1f\x85\u2028\u2029\u3000\xa0 ", "a ,b",
            ", . !", " , a , ", "A 1 ٣ ४ ² ½", "Straße STRASSE ﬁ ŉ İ ς Σ", "x\u0301 \u0301", "\ud800 lone surrogate"]
    lines = _real_lines() + MIXED + edge + _code_point_lines(211)
    for k in range(len(NORMALIZATIONS) + 1):
        for how in combinations(NORMALIZATIONS, k):
            assert normalized_lines(lines, how) == [old.normalized(t, how) for t in lines], how
    assert normalized_lines([], NORMALIZATIONS) == []


def _verdict_pairs() -> list[tuple[str, str]]:
    en = (SAMPLE / "train.en").read_text(encoding="utf-8").splitlines()[:1200]
    de = (SAMPLE / "train.de").read_text(encoding="utf-8").splitlines()[:1200]
    crafted = [
        ("See WWW.EXAMPLE.COM", "wWw.beispiel.de"), ("HTTPS://EXAMPLE.COM/a", "Text hier ."), ("httpſ://x.y", "z"),
        ("a.b@c.de , x@y.org", "Schreiben Sie uns ."), ("no url : here", "www"), ("ftp://x.y", "mail @ home"),
        ("www.a.de www.b.de", "www.c.de ."), ("The <b>bold</b> text", "Der Text"), ("a < b and c > d", "a < b"),
        ("<p\tclass='x'>Hi", "Hallo"), ("<br/>", "Zeile"), ("x<y-z:1 a='b'/>", "y"), ("< p >", "<3"),
        ("Tab\tis fine", "Tab\tist gut"), ("Bell \x07", "Glocke"), ("C1 \x85 here", "hier"), ("DEL \x7f", "x"),
        ("\ufffd", "x"), ("Hotel Adlon", "hotel adlon !"), ("", ""), (" ", " "), ("1 2 3", "4 5 6"),
        ("В 54 садибах розміщено 124 пам &apos; ятки .", "In den 54 Häusern befinden sich 124 Denkmäler ."),
        ("Il est exploité depuis 43 ans par la famille Janinet et Fils .", "Der Ausschuss hat den Bericht ."),
        ("La camera è dotata di aria condizionata , TV satellitare .", "Das Zimmer ist klimatisiert ."),
        ("THE HOTEL IS CLOSED ON MONDAYS AND TUESDAYS", "DAS HOTEL IST MONTAGS UND DIENSTAGS GESCHLOSSEN"),
        *MIXED_PAIRS,
    ]
    return list(zip(en, de, strict=True)) + crafted


MIXED_PAIRS = [(a, b) for a, b in zip(MIXED, reversed(MIXED), strict=True)]
# The baseline had no length filters (the subset step had them): compare with ours switched off.
NO_LENGTH = {"too_short": False, "too_long": False, "ratio": False}


@pytest.mark.parametrize("langs,settings", [
    (("en", "de"), {}),
    (("en", "de"), {"normalize": ["case"], "min_script_share": 0.8, "language_min_chars": 5}),
    (("en", "de"), {"language_threshold": 0.5, "copy": False, "markup": False}),
    (("en", "ru"), {}), (("zh", "ko"), {}), (("de", "el"), {"language_min_chars": 1}), (("xx", "yy"), {}),
])
def test_block_verdicts_are_the_old_pair_verdicts(langs, settings):
    from benchmarks import clean_baseline as old
    from pipeline_tasks.clean_filters import block_verdicts

    pairs = _verdict_pairs()
    cfg = CleanConfig.from_dict({**settings, **NO_LENGTH})
    codes = block_verdicts([s for s, _ in pairs], [t for _, t in pairs], *langs, cfg)
    got = [FILTERS[c - 1] if c else None for c in codes.tolist()]
    want = [old.pair_verdict(s, t, *langs, cfg) for s, t in pairs]
    assert got == want
    assert len(set(want)) >= 4  # the pairs exercise several filters


def test_pairs_that_differ_only_in_where_a_tab_is_are_not_duplicates(tmp_path):
    """A bug of the pair-by-pair step: it digested "source\\ttarget", so ("a\\tb", "c") and ("a", "b\\tc")
    had one digest and the second was dropped as a duplicate of the first."""
    from benchmarks import clean_baseline as old

    src, trg = tmp_path / "in.en", tmp_path / "in.de"
    src.write_text("The first sentence\twith a tab inside it .\nThe first sentence\n")
    trg.write_text("Der erste Satz .\nwith a tab inside it .\tDer erste Satz .\n")
    cfg = CleanConfig.from_dict({"language": False, **NO_LENGTH})
    assert old.clean(str(src), str(trg), tmp_path / "o.en", tmp_path / "o.de", "en", "de", cfg,
                     workers=1)["dropped"]["duplicate"] == 1
    report = clean(str(src), str(trg), tmp_path / "n.en", tmp_path / "n.de", "en", "de", cfg, workers=1)
    assert report["pairs_out"] == 2 and (tmp_path / "n.en").read_text() == src.read_text()


def _reference_dedup(blocks, dedup: bool, near_dedup: bool, keep_all: bool) -> list[list[int]]:
    """The old step's loop: pair by pair, Python sets, only written pairs remembered."""
    dup, near = FILTERS.index("duplicate") + 1, FILTERS.index("near_duplicate") + 1
    seen_e: set[int] = set()
    seen_n: set[int] = set()
    out = []
    for codes, exact, normal in blocks:
        result = []
        for c, e, n in zip(codes.tolist(), exact.tolist(), normal.tolist(), strict=True):
            if c == 0 and dedup and e in seen_e:
                c = dup
            elif c == 0 and near_dedup and n in seen_n:
                c = near
            result.append(c)
            if c == 0 or keep_all:
                seen_e.add(e)
                seen_n.add(n)
        out.append(result)
    return out


@pytest.mark.parametrize("keep_all", [False, True])
@pytest.mark.parametrize("dedup,near_dedup", [(True, True), (True, False), (False, True)])
def test_duplicates_are_resolved_as_pair_by_pair(keep_all, dedup, near_dedup):
    """Random blocks with many repeats, inside a block and across blocks; an exact digest does not always
    come with the same normalised one (collisions are not assumed away)."""
    from pipeline_tasks.clean_filters import resolve_duplicates
    from pipeline_tasks.digestset import DigestSet

    rng = np.random.default_rng(3)
    blocks = []
    for _ in range(30):
        n = int(rng.integers(0, 80))
        codes = np.where(rng.random(n) < 0.2, rng.integers(1, 7, n), 0).astype(np.uint8)
        exact = rng.integers(0, 40, n).astype(np.uint64)
        normal = np.where(rng.random(n) < 0.8, exact // np.uint64(3), rng.integers(0, 40, n)).astype(np.uint64)
        blocks.append((codes, exact, normal))
    want = _reference_dedup(blocks, dedup, near_dedup, keep_all)
    seen_e, seen_n = DigestSet(capacity=4), DigestSet(capacity=4)
    for (codes, exact, normal), expected in zip(blocks, want, strict=True):
        got = resolve_duplicates(codes, exact if dedup else None, normal if near_dedup else None, seen_e, seen_n,
                                  keep_all)
        assert got.tolist() == expected


def _noisy_corpus(tmp_path):
    """Real sample pairs with planted noise of every kind, and the byte-level oddities decode_lines
    handles: a byte-order mark, invalid UTF-8, '\\r\\n' and a lone '\\r', empty lines, no final '\\n'."""
    rng = random.Random(11)
    en = (SAMPLE / "train.en").read_bytes().splitlines()[:2500]
    de = (SAMPLE / "train.de").read_bytes().splitlines()[:2500]
    pairs = list(zip(en, de, strict=True))
    planted = [rng.choice(pairs) for _ in range(150)]                                       # duplicates
    planted += [(s.upper().replace(b" .", b"!"), t.upper()) for s, t in rng.sample(pairs, 80)]  # near dups
    planted += [(s, s) for s, _ in rng.sample(pairs, 40)] + [(t, s) for s, t in rng.sample(pairs, 40)]
    planted += [(b"<p>" + s + b"</p>", t) for s, t in rng.sample(pairs, 30)]
    planted += [(s, b"http://www.example.com/%d" % i) for i, (s, _) in enumerate(rng.sample(pairs, 30))]
    planted += [(s.replace(b" ", b" \x07 ", 1), t) for s, t in rng.sample(pairs, 30)]
    planted += [(s + b" \xff\xfe caf\xc3", t + b" \xe2\x82") for s, t in rng.sample(pairs, 30)]  # invalid UTF-8
    planted += [(s + b"\r", t + b"\r") for s, t in rng.sample(pairs, 30)]                # '\r\n' line ends
    planted += [(s.replace(b" ", b"\r", 1), t) for s, t in rng.sample(pairs, 20)]       # a '\r' inside
    planted += [(b"", b""), (b"   ", b" "), (b"\xef\xbb\xbfmid-file BOM", b"BOM")] * 5
    lines = pairs + planted
    rng.shuffle(lines)
    lines += [pairs[0], (b"The last line , without a line end .", b"Die letzte Zeile , ohne Zeilenende .")]
    src, trg = tmp_path / "noisy.en", tmp_path / "noisy.de"
    src.write_bytes(b"\xef\xbb\xbf" + b"\n".join(s for s, _ in lines))
    trg.write_bytes(b"\xef\xbb\xbf" + b"\n".join(t for _, t in lines))
    return src, trg


@pytest.mark.parametrize("workers,keep_all,settings", [
    (1, False, {}),
    (1, True, {}),
    (2, False, {}),
    (1, False, {"bad_characters": False, "language": False, "normalize": ["case", "whitespace"], "examples": 0}),
    (1, False, {"duplicate": False, "language_min_chars": 200}),
    (1, False, {"near_duplicate": False, "copy": False, "language": False}),
    (1, False, {"enabled": False}),
])
def test_outputs_are_byte_identical_to_the_old_steps(tmp_path, monkeypatch, workers, keep_all, settings):
    from benchmarks import clean_baseline as old
    from pipeline_tasks import clean as new
    from pipeline_tasks import clean_filters

    monkeypatch.setattr(new, "BLOCK_LINES", 997)           # several blocks: duplicates within and across them
    monkeypatch.setattr(clean_filters, "_PART", 401)       # several parts a block (in this process: workers=1)
    src, trg = _noisy_corpus(tmp_path)
    cfg = CleanConfig.from_dict({**settings, **NO_LENGTH})
    want = old.clean(str(src), str(trg), tmp_path / "old.en", tmp_path / "old.de", "en", "de", cfg, workers=1,
                     keep_all=keep_all)
    got = new.clean(str(src), str(trg), tmp_path / "new.en", tmp_path / "new.de", "en", "de", cfg,
                    workers=workers, keep_all=keep_all)
    assert all(got["dropped"].pop(name) == 0 for name in NO_LENGTH)  # the old step had no length filters
    assert json.dumps(got) == json.dumps(want)  # the report, key order (examples: first dropped first) included
    assert (tmp_path / "new.en").read_bytes() == (tmp_path / "old.en").read_bytes()
    assert (tmp_path / "new.de").read_bytes() == (tmp_path / "old.de").read_bytes()
    if not settings:
        assert sum(1 for v in got["dropped"].values() if v) >= 6 and got["pairs_in"] == 2997


def test_workers_send_back_verdicts_and_digests_not_text():
    """Only a line whose output differs from its raw bytes travels back: invalid UTF-8, '\\r\\n', no '\\n'."""
    from pipeline_tasks.clean_filters import Job, judge_block

    src = [b"Hello there , friend .\n", b"caf\xc3 \xff\n", b"Windows line\r\n", b"Good line\n", b"last"]
    trg = [b"Hallo , Freund .\n", b"Kaffee\n", b"Zeile\n", b"Gute Zeile\r\n", b"letzte\n"]
    judged = judge_block(Job(1, src, trg, "en", "de", CleanConfig(), True, True))
    assert judged.changed_sources == {1: "caf\ufffd \ufffd", 2: "Windows line", 4: "last"}
    assert judged.changed_targets == {3: "Gute Zeile"}
    assert judged.codes.dtype == np.uint8 and judged.exact.dtype == judged.near.dtype == np.uint64
    assert judged.codes.tolist()[1] == FILTERS.index("bad_characters") + 1
    clean_block = judge_block(Job(1, src[:1] + src[3:4], trg[:1] + trg[2:3], "en", "de", CleanConfig(), False,
                                    False))
    assert clean_block.changed_sources == clean_block.changed_targets == {}
    assert clean_block.exact is None and clean_block.near is None
