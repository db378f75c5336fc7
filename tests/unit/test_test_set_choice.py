"""Several test sets: what test_sets may say (checked before any download), how each set's scores are named,
averaged and shown, and how the gate picks the set that decides."""

from __future__ import annotations

import math

import pytest

from pipeline_tasks.approval import request_text
from pipeline_tasks.evaluate import mean_metrics, sacrebleu_scores, set_metrics
from pipeline_tasks.gate import GateRule, decide
from pipeline_tasks.plan import PlanError, check_training_run
from pipeline_tasks.test_sets import TestSetError, TestSetSpec, catalog_source, members, parse_test_sets

PARAMS = {"source_lang": "en", "target_lang": "de", "backend": "local", "artifact_root": "/tmp/x",
          "image": "wmt-seq2seq:latest", "init_model": "none", "role_arn": None, "gate": {"metric": "test:bleu"},
          "hyperparameters": {"rnn_num_hidden": 64}, "subset_size": 10}


def test_test_sets_name_catalog_sets_files_or_the_corpus_split():
    assert parse_test_sets([], "en", "de") == parse_test_sets(None, "en", "de") == [TestSetSpec("test")]
    specs = parse_test_sets(["test", "newstest2017", {"name": "mine", "source": "s3://b/src.en",
                                                        "reference": "s3://b/ref.de"},
                             {"name": "ns16", "catalog": "newstest2016", "url": "http://mirror/test.tgz"}], "en", "de")
    assert [s.name for s in specs] == ["test", "newstest2017", "mine", "ns16"]
    assert specs[0].corpus_split and specs[1].catalog == "newstest2017" and not specs[2].corpus_split
    assert specs[3].url == "http://mirror/test.tgz"
    # sacreBLEU's registry says where each pair is and where the tarball comes from
    assert members("newstest2017", "en", "de") == ("test/newstest2017-ende-src.en.sgm",
                                                   "test/newstest2017-ende-ref.de.sgm")
    assert members("newstest2017", "de", "en")[0] == "test/newstest2017-deen-src.de.sgm"
    assert catalog_source("newstest2017") == ("https://data.statmt.org/wmt17/translation-task/test.tgz",
                                              "86a1724c276004aa25455ae2a04cef26")


@pytest.mark.parametrize("value,needle", [
    (["newstest2099"], "test_sets[0]: unknown test set 'newstest2099'; the catalog has newstest2014, "),
    ([{"name": "mine"}], "test_sets[0] (mine): not in the catalog"),
    ([{"name": "x", "catalog": "newstest2099"}], "test_sets[0]: unknown test set 'newstest2099'"),
    ([{"name": "x", "source": "a.en"}], "test_sets[0] (x): source and reference go together"),
    ([{"name": "a b", "source": "a", "reference": "b"}], "test set name 'a b': use letters, digits"),
    ([{"name": "mean", "source": "a", "reference": "b"}], "'mean' is reserved"),
    (["newstest2017", "newstest2017"], "the name(s) newstest2017 appear more than once"),
    (["newstest2017", "test"], "\"test\" (the corpus's test split) must come first"),
    ([{"name": "x", "src": "a"}], "test_sets[0]: unknown key(s) src"),
    ([3], "test_sets[0]: a catalog name"),
    ("newstest2017", "must be a list"),
])
def test_a_bad_test_set_is_named(value, needle):
    with pytest.raises(TestSetError) as e:
        parse_test_sets(value, "en", "de")
    assert needle in str(e.value)


def test_a_catalog_set_without_the_language_pair_is_refused():
    with pytest.raises(TestSetError, match="test set newstest2017 has no en-fr"):
        parse_test_sets(["newstest2017"], "en", "fr")


def test_plan_checks_the_test_sets_and_the_gates_choice():
    check_training_run({**PARAMS, "test_sets": ["test", "newstest2017"],
                        "gate": {"metric": "test:bleu", "test_set": "newstest2017"}}, None, PARAMS)
    check_training_run({**PARAMS, "test_sets": ["newstest2016", "newstest2017"],
                        "gate": {"metric": "test:chrf", "test_set": "mean"}}, None, PARAMS)
    with pytest.raises(PlanError, match=r"gate: test_set 'newstest2015' is not one of the run's test sets "
                                        r"\(test, newstest2017\) or mean"):
        check_training_run({**PARAMS, "test_sets": ["test", "newstest2017"],
                            "gate": {"metric": "test:bleu", "test_set": "newstest2015"}}, None, PARAMS)
    with pytest.raises(PlanError, match="unknown test set 'newstest2019'"):
        check_training_run({**PARAMS, "test_sets": ["newstest2019"]}, None, PARAMS)


def test_the_gate_decides_on_the_named_set_or_the_mean():
    new = {"test:bleu": 20.0, "newstest2017:bleu": 18.0, "mean:bleu": 19.0, "newstest2017:ter": 70.0}
    was = {"metrics": {"test:bleu": 21.0, "newstest2017:bleu": 17.5, "mean:bleu": 19.5, "newstest2017:ter": 72.0}}
    assert not decide(new, was, GateRule("test:bleu")).promote  # the first set
    by_2017 = decide(new, was, GateRule("test:bleu", test_set="newstest2017"))
    assert by_2017.promote and by_2017.reason.startswith("newstest2017:bleu 18 vs promoted 17.5")
    assert not decide(new, was, GateRule("test:bleu", test_set="mean")).promote
    # TER: lower is better, whatever the set is called
    assert decide(new, was, GateRule("test:ter", test_set="newstest2017")).promote
    assert GateRule("test:bleu", test_set="winter2024").higher_is_better is True
    assert GateRule("test:ter", test_set="winter2024").higher_is_better is False
    with pytest.raises(ValueError, match="gate metric must be <test set>:<measure>"):
        GateRule("bleu")


def test_scores_per_set_and_their_means():
    a = {"metrics": {"test:bleu": 20.0, "test:chrf": 50.0, "test:perplexity": 8.0},
         "perplexity": {"tokens": 100, "nll_sum": 100 * math.log(8.0), "accuracy": 0.5}}
    b = {"metrics": {"test:bleu": 30.0, "test:chrf": 60.0, "test:perplexity": 2.0},
         "perplexity": {"tokens": 300, "nll_sum": 300 * math.log(2.0), "accuracy": 0.7}}
    assert set_metrics("newstest2017", a["metrics"]) == {"newstest2017:bleu": 20.0, "newstest2017:chrf": 50.0,
                                                          "newstest2017:perplexity": 8.0}
    mean = mean_metrics([a, b])
    assert mean["mean:bleu"] == 25.0 and mean["mean:chrf"] == 55.0
    # perplexity pooled over the sets' tokens (not the mean of two perplexities: that would be 5)
    assert mean["mean:perplexity"] == pytest.approx(math.exp((100 * math.log(8) + 300 * math.log(2)) / 400))
    assert mean["mean:accuracy"] == pytest.approx((50 + 210) / 400)


def test_sacrebleu_scores_include_chrf_plus_plus_and_ter():
    from sacrebleu.metrics import BLEU, CHRF, TER

    hyps = ["The cat sat on the mat .", "A dog barks ."]
    refs = ["The cat sat on a mat .", "The dog barks loudly ."]
    s = sacrebleu_scores(hyps, refs)
    assert s["bleu"]["score"] == BLEU().corpus_score(hyps, [refs]).score
    assert s["chrfpp"]["score"] == CHRF(word_order=2).corpus_score(hyps, [refs]).score != s["chrf"]["score"]
    assert s["ter"]["score"] == TER().corpus_score(hyps, [refs]).score
    assert "chrF2++" in s["chrfpp"]["signature"] or "nw:2" in s["chrfpp"]["signature"]


def test_the_approver_sees_every_sets_bleu():
    _, body = request_text("r1", {"reason": "mean:bleu 19 vs 18"},
                           {"metrics": {"test:bleu": 20.0, "newstest2017:bleu": 18.0, "mean:bleu": 19.0}},
                           {"run_id": "r0", "metrics": {"test:bleu": 19.0, "newstest2017:bleu": 17.0}},
                           {"model": "m"}, 72)
    assert "| newstest2017:bleu | 18 | 17 |" in body and "| mean:bleu | 19 | – |" in body
