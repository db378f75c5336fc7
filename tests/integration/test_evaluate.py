"""The `evaluate` step on real newstest2017 en-de text and on the copy model, checked against independent
computations: sacreBLEU (API and its own command line) on the files written, and a plain per-sentence
teacher-forced loop over the loaded model for perplexity."""

from __future__ import annotations

import json
import math
import re
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
import torch
import torch.nn.functional as F

from model.checkpoint import load_model
from model.tokenizer import Tokenizer
from model.vocab import BOS_ID, EOS_ID, UNK_ID
from pipeline_tasks import cli
from pipeline_tasks.evaluate import EvaluateConfig, evaluate
from pipeline_tasks.textio import MisalignedError
from tests.conftest import NEWSTEST, head_lines
from tests.system.copy_task import SYMBOLS, sequences

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_LINES = 40
BLANK_AT = 7  # 1-based line number of the blank source line inserted into the test set
SACREBLEU_CLI = Path(sys.executable).parent / "sacrebleu"


def read_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return text[:-1].split("\n")


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    if len(data) < 33 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return False
    width, height = struct.unpack(">II", data[16:24])
    return width > 0 and height > 0


@pytest.fixture(scope="module")
def newstest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The first 40 real newstest2017 pairs, with line 7's source blanked (its reference kept)."""
    tmp = tmp_path_factory.mktemp("newstest")
    src = head_lines(NEWSTEST / "newstest2017.en-de.en", tmp / "test.en", N_LINES)
    ref = head_lines(NEWSTEST / "newstest2017.en-de.de", tmp / "test.de", N_LINES)
    lines = src.read_bytes().split(b"\n")
    lines[BLANK_AT - 1] = b""
    src.write_bytes(b"\n".join(lines))
    return {"source": src, "reference": ref}


@pytest.fixture(scope="module")
def evaluated(wmt_model: Path, newstest: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("eval") / "out"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # On the CPU, in fp32: the perplexity check compares with an fp32 loop (a GPU would use bf16 autocast).
        result = evaluate(wmt_model, newstest["source"], newstest["reference"], out, EvaluateConfig(beam_size=2),
                          device="cpu")
    finally:
        torch.set_num_threads(before)
    return {"out": out, "result": result, "metrics": json.loads((out / "metrics.json").read_text("utf-8"))}


def test_metrics_json_is_what_evaluate_returns(evaluated):
    assert evaluated["metrics"] == json.loads(json.dumps(evaluated["result"]))
    assert evaluated["metrics"]["decoding"]["beam_size"] == 2
    assert evaluated["metrics"]["decoding"]["text_format"] == "raw"


def test_every_source_line_has_a_hypothesis_line(evaluated, newstest):
    out, m = evaluated["out"], evaluated["metrics"]
    hyps = read_lines(out / "hypotheses.txt")
    assert len(hyps) == N_LINES == len(read_lines(out / "hypotheses.tok.txt"))
    assert hyps[BLANK_AT - 1] == ""
    assert sum(h == "" for h in hyps) == 1  # the model says something for every real sentence
    assert m["sentences"]["total"] == N_LINES
    assert m["sentences"]["empty_source"] == 1
    assert m["sentences"]["empty_source_lines"] == [BLANK_AT]
    # The reference is written as it was scored: here, byte for byte the input.
    assert (out / "reference.txt").read_bytes() == newstest["reference"].read_bytes()


def test_bleu_and_chrf_equal_sacrebleu_on_the_written_files(evaluated):
    out, m = evaluated["out"], evaluated["metrics"]
    hyps, refs = read_lines(out / "hypotheses.txt"), read_lines(out / "reference.txt")
    bleu = sacrebleu.corpus_bleu(hyps, [refs])
    chrf = sacrebleu.corpus_chrf(hyps, [refs])
    assert m["bleu"]["score"] == pytest.approx(bleu.score, abs=1e-9)
    assert m["bleu"]["string"] == str(bleu)  # n-gram precisions, brevity penalty, lengths: the same counts
    assert m["chrf"]["score"] == pytest.approx(chrf.score, abs=1e-9)
    assert chrf.score > 0
    assert m["metrics"]["test:bleu"] == m["bleu"]["score"]
    assert m["metrics"]["test:chrf"] == m["chrf"]["score"]
    assert m["bleu"]["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert m["chrf"]["signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")


def test_recompute_command_reproduces_the_scores(evaluated):
    m = evaluated["metrics"]
    for key, names in (("recompute", ("bleu", "chrf", "ter")), ("recompute_chrfpp", ("chrfpp",)),
                       ("recompute_tokenized", ("tokenized_bleu",))):
        argv = shlex.split(m[key])
        assert argv[0] == "sacrebleu"
        proc = subprocess.run([str(SACREBLEU_CLI), *argv[1:]], capture_output=True, text=True, check=True)
        scores = json.loads(proc.stdout)
        scores = scores if isinstance(scores, list) else [scores]
        assert [s["score"] for s in scores] == [round(m[name]["score"], 4) for name in names]


def test_tokenized_bleu_recomputes_from_the_token_files(evaluated, wmt_model, newstest):
    out, m = evaluated["out"], evaluated["metrics"]
    hyps_tok, refs_tok = read_lines(out / "hypotheses.tok.txt"), read_lines(out / "reference.tok.txt")
    expected = sacrebleu.corpus_bleu(hyps_tok, [refs_tok], tokenize="none", force=True).score
    assert m["tokenized_bleu"]["score"] == pytest.approx(expected, abs=1e-9)
    assert m["metrics"]["test:tokenized_bleu"] == m["tokenized_bleu"]["score"]
    # The token files are the model's tokenizer's view of the very lines scored by sacreBLEU.
    tok = Tokenizer.load(wmt_model)
    assert refs_tok == [tok.encode(r, "target") for r in read_lines(newstest["reference"])]
    assert read_lines(out / "hypotheses.txt") == [tok.decode(h, "target") if h else "" for h in hyps_tok]
    assert any(len(h.split()) > 1 for h in hyps_tok)


def test_perplexity_equals_an_independent_per_sentence_loop(evaluated, wmt_model, newstest):
    """exp(mean NLL over reference tokens + </s>), one sentence at a time, no padding anywhere."""
    m = evaluated["metrics"]
    loaded = load_model(wmt_model)
    tok = Tokenizer.load(wmt_model)
    hp = loaded.hp
    nll = 0.0
    tokens = pairs = 0
    with torch.no_grad():
        for src, ref in zip(read_lines(newstest["source"]), read_lines(newstest["reference"]), strict=True):
            if not src.strip() or not ref.strip():
                continue
            s = [loaded.source_vocab.get(t, UNK_ID) for t in tok.encode(src, "source").split()][:hp.max_seq_len_source]
            t = [loaded.target_vocab.get(w, UNK_ID) for w in tok.encode(ref, "target").split()][:hp.max_seq_len_target]
            src_ids = torch.tensor([[*s, EOS_ID]])
            logits = loaded.model(src_ids, torch.tensor([len(s) + 1]), torch.tensor([[BOS_ID, *t]]))
            logp = F.log_softmax(logits.float(), dim=-1)[0]
            gold = torch.tensor([*t, EOS_ID])
            nll -= float(logp[torch.arange(len(gold)), gold].sum())
            tokens += len(gold)
            pairs += 1
    ppl = m["perplexity"]
    assert pairs == N_LINES - 1 == ppl["pairs"]
    assert ppl["pairs_skipped"] == 1
    assert ppl["tokens"] == tokens
    assert ppl["nll_sum"] == pytest.approx(nll, rel=1e-4)
    assert ppl["test:perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)
    assert m["metrics"]["test:perplexity"] == ppl["test:perplexity"]
    assert ppl["truncated_pairs"] > 0  # newstest sentences are longer than this model's 20 tokens


def test_identity_of_model_and_data(evaluated, wmt_model, newstest):
    import hashlib

    m = evaluated["metrics"]
    assert m["model"]["uri"] == str(wmt_model)
    assert m["model"]["params_sha256"] == hashlib.sha256((wmt_model / "params.pt").read_bytes()).hexdigest()
    assert m["model"]["hyperparameters"] == json.loads((wmt_model / "hyperparameters.json").read_text())
    training = json.loads((wmt_model / "metrics.json").read_text())
    assert m["model"]["best_checkpoint"] == training["best_checkpoint"]
    assert m["model"]["num_updates"] == training["num_updates"]
    for side in ("source", "reference"):
        assert m["data"][side]["path"] == str(newstest[side])
        assert m["data"][side]["sha256"] == hashlib.sha256(newstest[side].read_bytes()).hexdigest()
        assert m["data"][side]["lines"] == N_LINES
    assert m["timing"]["sentences_per_second"] > 0


def test_report_pngs_and_page(evaluated):
    report = evaluated["out"] / "report"
    page = (report / "index.html").read_text(encoding="utf-8")
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert pngs == ["attention_1.png", "attention_2.png", "attention_3.png", "learning_curves.png"]
    for name in pngs:
        assert is_png(report / name), name
        assert f'<img src="{name}"' in page
    m = evaluated["metrics"]
    assert m["report"] == "report/index.html"
    assert m["bleu"]["signature"] in page
    # The examples are real test sentences, HTML-escaped, shown with their hypotheses.
    hyps = read_lines(evaluated["out"] / "hypotheses.txt")
    import html

    assert html.escape(hyps[0], quote=True) in page


def test_mismatched_line_counts_fail_before_any_work(tmp_path, newstest):
    short = head_lines(newstest["reference"], tmp_path / "short.de", 39)
    out = tmp_path / "out"
    # The model path does not exist: the line counts are checked first.
    with pytest.raises(MisalignedError) as e:
        evaluate(tmp_path / "no-model", newstest["source"], short, out)
    msg = str(e.value)
    assert str(newstest["source"]) in msg and "40 lines" in msg
    assert str(short) in msg and "39 lines" in msg
    assert not out.exists()


# --- the copy model: output == input, so BLEU is known exactly --------------------------------------------

def copy_lines(n: int, seed: int = 7) -> list[str]:
    return [" ".join(SYMBOLS[i - 4] for i in seq) for seq in sequences(n, seed)]


def test_copy_model_hypotheses_equal_the_sources_and_bleu_is_100(copy_model, tmp_path):
    lines = copy_lines(30)
    src = tmp_path / "src.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    m = evaluate(copy_model, src, src, out, EvaluateConfig(batch_size=8, report=False))
    assert read_lines(out / "hypotheses.txt") == lines
    assert read_lines(out / "hypotheses.tok.txt") == lines
    assert m["metrics"]["test:bleu"] == pytest.approx(100.0)
    assert m["metrics"]["test:chrf"] == pytest.approx(100.0)
    assert m["metrics"]["test:tokenized_bleu"] == pytest.approx(100.0)
    assert m["metrics"]["test:perplexity"] < 1.1
    assert m["perplexity"]["tokens"] == sum(len(line.split()) + 1 for line in lines)
    assert m["decoding"]["text_format"] == "raw"
    assert not (out / "report").exists()


def test_copy_model_partial_match_scores_like_sacrebleu(copy_model, tmp_path):
    """References that differ from the (copied) output on some lines: a BLEU strictly between 0 and 100,
    and still sacreBLEU's number, on a test set with invalid UTF-8 and a blank line counted, not dropped."""
    lines = copy_lines(20, seed=11)
    refs = [" ".join(reversed(line.split())) if i % 3 == 0 else line for i, line in enumerate(lines)]
    src, ref = tmp_path / "src.txt", tmp_path / "ref.txt"
    src.write_bytes(("\n".join(lines[:5]) + "\n").encode() + b"a b \xff c\n\n" + ("\n".join(lines[7:]) + "\n").encode())
    ref.write_text("\n".join(refs) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    m = evaluate(copy_model, src, ref, out, EvaluateConfig(batch_size=4, chunk_sentences=6, attention_examples=2))
    hyps = read_lines(out / "hypotheses.txt")
    assert len(hyps) == 20
    assert hyps[6] == ""
    assert hyps[:5] == lines[:5] and hyps[7:] == lines[7:]
    assert m["data"]["source"]["replaced_chars"] == 1
    assert m["sentences"]["empty_source_lines"] == [7]
    expected = sacrebleu.corpus_bleu(hyps, [refs])
    assert 0 < expected.score < 100
    assert m["bleu"]["score"] == pytest.approx(expected.score, abs=1e-9)
    assert m["bleu"]["string"] == str(expected)
    assert m["perplexity"]["unk_tokens"]["source"] == 1  # the U+FFFD token
    assert len(list((out / "report").glob("attention_*.png"))) == 2


def test_a_failure_leaves_no_output_folder(copy_model, tmp_path, monkeypatch):
    import pipeline_tasks.report

    src = tmp_path / "src.txt"
    src.write_text("a b c\n", encoding="utf-8")

    def broken(*args, **kwargs):
        raise RuntimeError("report failed")

    monkeypatch.setattr(pipeline_tasks.report, "write_report", broken)
    with pytest.raises(RuntimeError, match="report failed"):
        evaluate(copy_model, src, src, tmp_path / "eval" / "out")
    assert list((tmp_path / "eval").iterdir()) == []  # neither the folder nor its staging copy


def test_rerun_without_report_leaves_no_report_of_the_earlier_model(copy_model, tmp_path):
    """A report/ left from an earlier evaluation would show another model's curves beside these scores."""
    lines = copy_lines(6)
    src = tmp_path / "src.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "eval"
    (out / "report").mkdir(parents=True)
    (out / "report" / "index.html").write_text("<h1>an earlier model</h1>", encoding="utf-8")
    (out / "hypotheses.txt").write_text("old\n", encoding="utf-8")
    evaluate(copy_model, src, src, out, EvaluateConfig(report=False))
    assert sorted(p.name for p in out.iterdir()) == ["hypotheses.tok.txt", "hypotheses.txt", "metrics.json",
                                                      "reference.tok.txt", "reference.txt", "training-metrics.json"]
    assert (out / "training-metrics.json").read_bytes() == (copy_model / "metrics.json").read_bytes()
    assert read_lines(out / "hypotheses.txt") == lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "src.txt"]


def test_bom_at_the_start_of_source_and_reference_is_not_text(copy_model, tmp_path):
    lines = copy_lines(8, seed=5)
    src, ref = tmp_path / "src.txt", tmp_path / "ref.txt"
    for p in (src, ref):
        p.write_bytes("\ufeff".encode() + ("\n".join(lines) + "\n").encode())
    out = tmp_path / "out"
    m = evaluate(copy_model, src, ref, out, EvaluateConfig(report=False))
    assert read_lines(out / "hypotheses.txt") == lines        # the first sentence's first token is not <unk>
    assert read_lines(out / "reference.txt") == lines         # the reference as scored: no BOM
    assert m["metrics"]["test:bleu"] == pytest.approx(100.0)
    assert m["data"]["source"]["bom_stripped"] is True and m["data"]["reference"]["bom_stripped"] is True


def _final_log_line(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records
             if r.name == "pipeline_tasks.evaluate" and "perplexity" in r.getMessage()]
    assert len(lines) == 1, lines
    return lines[0]


def test_log_names_the_final_uri_with_rounded_figures(copy_model, tmp_path, caplog):
    lines = copy_lines(10, seed=3)
    src = tmp_path / "src.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    work = tmp_path / "wmt-eval-tmp" / "eval"
    final = "s3://bucket/wmt_seq2seq/run1/eval"
    with caplog.at_level("INFO", logger="pipeline_tasks.evaluate"):
        m = evaluate(copy_model, src, src, work, EvaluateConfig(report=False), output_uri=final)
    line = _final_log_line(caplog)
    assert line.endswith(f"-> {final}") and str(work) not in line and "wmt-eval-tmp" not in line
    ppl = m["metrics"]["test:perplexity"]
    assert f"test perplexity {ppl:.2f}" in line and f"{ppl:.2f}" != repr(ppl)
    assert "BLEU 100.00" in line and "chrF 100.00" in line
    figures = re.findall(r"\d+\.\d+", line.split("(sacreBLEU")[0])
    assert len(figures) == 4 and all(len(x.split(".")[1]) == 2 for x in figures)
    # metrics.json cannot name the temporary folder either: the commands run in the published folder
    assert m["recompute"].startswith("sacrebleu reference.txt -i hypotheses.txt") and str(work) not in m["recompute"]


def test_evaluate_step_logs_where_it_published(copy_model, tmp_path, caplog):
    from pipeline_tasks.pipeline import CorpusConfig, evaluate_step, fetch_test_sets_step
    from pipeline_tasks.runs import RunLayout

    lines = copy_lines(6, seed=4)
    src = tmp_path / "test.src"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    layout = RunLayout(str(tmp_path / "root"), "wmt_seq2seq", "manual__1")
    corpus = CorpusConfig("wmt-toy-ende-sample")
    sets = fetch_test_sets_step(layout, corpus, [{"name": "copy", "source": str(src), "reference": str(src)}])
    assert sets == {"test_sets": ["copy"], "fetched": layout.uri("test_sets")}
    with caplog.at_level("INFO", logger="pipeline_tasks.evaluate"):
        result = evaluate_step(layout, corpus, str(copy_model), EvaluateConfig(report=False),
                               test_sets=sets["test_sets"])
    line = _final_log_line(caplog)
    assert result["eval"] == layout.uri("eval") and line.endswith(f"-> {layout.uri('eval')}")
    assert "wmt-eval-" not in line
    metrics = json.loads((Path(layout.uri("eval")) / "metrics.json").read_text(encoding="utf-8"))
    assert shlex.split(metrics["recompute"])[1] == str(Path(layout.uri("eval")) / "reference.txt")


# --- the command line -------------------------------------------------------------------------------------

def test_cli_evaluate_writes_the_files_and_prints_the_summary(wmt_model, newstest, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["-q", "evaluate", "--model", str(wmt_model), "--source", str(newstest["source"]),
                   "--reference", str(newstest["reference"]), "--output", str(out), "--beam-size", "1",
                   "--batch-size", "4", "--max-sentences", "10", "--no-report"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert printed["metrics"] == written["metrics"]
    assert "hyperparameters" not in printed["model"]
    assert written["decoding"]["beam_size"] == 1
    assert written["sentences"]["total"] == 10
    assert len(read_lines(out / "hypotheses.txt")) == 10
    assert len(read_lines(out / "reference.txt")) == 10
    assert not (out / "report").exists()


def test_cli_evaluate_mismatch_is_a_one_line_error(wmt_model, newstest, tmp_path, capsys):
    short = head_lines(newstest["reference"], tmp_path / "short.de", 12)
    rc = cli.main(["-q", "evaluate", "--model", str(wmt_model), "--source", str(newstest["source"]),
                   "--reference", str(short), "--output", str(tmp_path / "out")])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "12 lines" in err and str(short) in err
    assert not (tmp_path / "out").exists()


# --- several test sets ------------------------------------------------------------------------------------

def test_each_test_set_is_scored_apart_and_recomputes_from_its_files(wmt_model, tmp_path):
    """Two real newstest2017 slices as two named sets: the first in the folder itself, the second under
    test_sets/; every score of each set recomputed with sacreBLEU from the files written; the summary names
    each set's scores and their means; the gate can decide on either."""
    from pipeline_tasks.evaluate import EvalSet, evaluate_sets
    from pipeline_tasks.gate import GateRule, decide

    sets = []
    for name, start in (("ns17a", 0), ("ns17b", 40)):
        for lang in ("en", "de"):
            lines = (NEWSTEST / f"newstest2017.en-de.{lang}").read_text(encoding="utf-8").splitlines()
            (tmp_path / f"{name}.{lang}").write_text("\n".join(lines[start:start + 30]) + "\n", encoding="utf-8")
        sets.append(EvalSet(name, str(tmp_path / f"{name}.en"), str(tmp_path / f"{name}.de")))
    out = tmp_path / "eval"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = evaluate_sets(wmt_model, sets, out, EvaluateConfig(beam_size=1), device="cpu")
    finally:
        torch.set_num_threads(before)
    summary = json.loads((out / "metrics.json").read_text("utf-8"))
    assert summary["test_set"] == "ns17a" and list(summary["test_sets"]) == ["ns17a", "ns17b"]
    assert summary["test_sets"]["ns17b"]["folder"] == "test_sets/ns17b"
    assert summary["test_sets"]["ns17a"]["folder"] == "."
    flat = summary["metrics"]
    for name, folder in (("ns17a", out), ("ns17b", out / "test_sets" / "ns17b")):
        mine = json.loads((folder / "metrics.json").read_text("utf-8"))
        assert mine["test_set"] == name and (folder / "report" / "index.html").is_file()
        hyps, refs = read_lines(folder / "hypotheses.txt"), read_lines(folder / "reference.txt")
        assert len(hyps) == len(refs) == 30
        assert refs == (tmp_path / f"{name}.de").read_text(encoding="utf-8").splitlines()
        independent = {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
                       "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
                       "chrfpp": sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score,
                       "ter": sacrebleu.corpus_ter(hyps, [refs]).score}
        for measure, value in independent.items():
            assert mine["metrics"][f"test:{measure}"] == pytest.approx(value, abs=1e-9), (name, measure)
            assert flat[f"{name}:{measure}"] == pytest.approx(value, abs=1e-9), (name, measure)
        assert flat[f"{name}:perplexity"] == mine["metrics"]["test:perplexity"] > 1
    # the first set's scores are still the test:* ones; the means are the sets' means (perplexity pooled)
    assert flat["test:bleu"] == flat["ns17a:bleu"] and result["metrics"] == flat
    assert flat["mean:bleu"] == pytest.approx((flat["ns17a:bleu"] + flat["ns17b:bleu"]) / 2)
    assert min(flat["ns17a:perplexity"], flat["ns17b:perplexity"]) <= flat["mean:perplexity"] <= \
        max(flat["ns17a:perplexity"], flat["ns17b:perplexity"])
    page = (out / "report" / "index.html").read_text("utf-8")
    assert "<h2>Test sets</h2>" in page and '<a href="../test_sets/ns17b/report/index.html">' in page
    promoted = {"metrics": {**flat, "ns17b:bleu": flat["ns17b:bleu"] + 1}}
    assert decide(flat, promoted, GateRule("test:bleu", test_set="ns17a")).promote
    assert not decide(flat, promoted, GateRule("test:bleu", test_set="ns17b")).promote
