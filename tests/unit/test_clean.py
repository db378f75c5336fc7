"""The clean step (pipeline_tasks/clean.py): each filter on crafted pairs, the settings, and a noisy corpus
made from the bundled sample's real text with planted noise of each kind the filters are for."""

from __future__ import annotations

import json
import random

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
    ("info@example.com", "Schreiben Sie uns eine Nachricht .", "url_only"),
    ("Hotel Adlon Kempinski Berlin", "Hotel Adlon Kempinski Berlin", "copy"),
    ("Hotel Adlon , Berlin", "hotel adlon berlin", "copy"),
    ("В 54 садибах розміщено 124 пам &apos; ятки .", "In den 54 Häusern befinden sich 124 Denkmäler .", "script"),
    ("Il est exploité depuis 43 ans par la famille Janinet et Fils .", GOOD[1], "language"),
    (GOOD[0], "Il est exploité depuis 43 ans par la famille Janinet et Fils .", "language"),
    ("Thank you .", "Danke schön .", None),  # too short to tell the language: kept
])
def test_each_filter_on_a_crafted_pair(source, target, verdict):
    assert pair_verdict(source, target, "en", "de", CleanConfig()) == verdict


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
