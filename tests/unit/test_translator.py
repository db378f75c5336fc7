"""model/translator.py: batching keeps the input order, greedy and beam search both copy, the output length
rule, and InferenceConfig's environment form and its effect on the Translator. The copy model echoes its
input (a..p, 3–8 tokens reliably); the WMT model carries a real training length ratio."""

from __future__ import annotations

import json
import math

import pytest

from model.inference_config import InferenceConfig
from model.translator import InputError, Translator
from tests.models import sentences

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def translator(copy_model) -> Translator:
    return Translator.load(copy_model, InferenceConfig(), "cpu")


def with_config(copy_model, **config) -> Translator:
    return Translator.load(copy_model, InferenceConfig(**config), "cpu")


def test_batching_keeps_input_order(copy_model, translator):
    texts = sentences(25, seed=2, lo=3, hi=8)
    small_batches = with_config(copy_model, batch_size=2)
    assert small_batches.translate_texts(texts) == translator.translate_texts(texts) == texts


def test_greedy_decoding_copies_too(copy_model):
    texts = sentences(10, seed=3)
    assert with_config(copy_model, beam_size=1).translate_texts(texts) == texts


# --- InferenceConfig from the environment ---------------------------------------------------------------

@pytest.mark.parametrize(("env", "expected"), [
    ({"SEQ2SEQ_BATCH_SIZE": "big"}, "SEQ2SEQ_BATCH_SIZE='big': expected an integer"),
    ({"SEQ2SEQ_BATCH_SIZE": "0"}, "SEQ2SEQ_BATCH_SIZE='0'"),
    ({"SEQ2SEQ_BEAM_SIZE": "-1"}, "SEQ2SEQ_BEAM_SIZE='-1'"),
    ({"SEQ2SEQ_MAX_OUTPUT_LENGTH": "1.5"}, "SEQ2SEQ_MAX_OUTPUT_LENGTH='1.5'"),
    ({"SEQ2SEQ_TEXT_FORMAT": "bpe"}, "SEQ2SEQ_TEXT_FORMAT='bpe': text_format must be one of raw, tokens"),
    ({"SEQ2SEQ_UNKNOWN_TOKENS": "drop"}, "SEQ2SEQ_UNKNOWN_TOKENS='drop'"),
    ({"SEQ2SEQ_ON_ERROR": "skip"}, "SEQ2SEQ_ON_ERROR='skip': on_error must be one of fail, record"),
])
def test_config_from_env_errors_name_the_variable(env, expected):
    with pytest.raises(ValueError) as e:
        InferenceConfig.from_env(env)
    assert expected in str(e.value), str(e.value)


def test_config_env_round_trip():
    assert InferenceConfig.from_env({}) == InferenceConfig()
    assert InferenceConfig.from_env({"SEQ2SEQ_BEAM_SIZE": " ", "OTHER": "x"}) == InferenceConfig()
    config = InferenceConfig(batch_size=7, beam_size=2, max_output_length=30, text_format="tokens",
                             unknown_tokens="reject", on_error="record")
    assert config.to_env()["SEQ2SEQ_BATCH_SIZE"] == "7"
    assert InferenceConfig.from_env(config.to_env()) == config
    assert InferenceConfig.from_env(InferenceConfig().to_env()) == InferenceConfig()


def test_output_length_follows_the_source_by_default(wmt_model):
    """Without max_output_length each sentence may run to ceil(factor x its source length), the factor made
    from the training data's length ratio stored with the model (Sockeye's rule)."""
    config = json.loads((wmt_model / "config.json").read_text())
    mean, std = config["length_ratio_mean"], config["length_ratio_std"]
    assert 0.5 < mean < 2.0 and 0.0 < std < 2.0
    translator = Translator.load(wmt_model, InferenceConfig(beam_size=1, text_format="tokens"), "cpu")
    assert translator.length_factor == pytest.approx(mean + 2 * std)
    assert "ceil(" in translator.output_length_rule
    texts = ["the", "the european union", " ".join(["the"] * 40)]
    sources = [translator.source_from_text(t) for t in texts]
    for src, out in zip(sources, translator.translate(sources)):
        limit = min(math.ceil(translator.length_factor * (len(src.ids) + 1)), translator.max_output_length)
        assert len(out.target_ids) <= limit
    wider = Translator.load(wmt_model, InferenceConfig(beam_size=1, text_format="tokens",
                                                       max_output_length_num_stds=4), "cpu")
    assert wider.length_factor == pytest.approx(mean + 4 * std)
    assert InferenceConfig.from_env({"SEQ2SEQ_MAX_OUTPUT_LENGTH_NUM_STDS": "-1"}).max_output_length_num_stds == -1
    fixed = Translator.load(wmt_model, InferenceConfig(beam_size=1, max_output_length=5), "cpu")
    assert fixed.output_length_rule == "5 tokens"


def test_config_applies_to_the_translator(copy_model):
    t = with_config(copy_model, beam_size=1, max_output_length=3, text_format="tokens")
    assert (t.beam_size, t.max_output_length, t.text_format) == (1, 3, "tokens")
    assert t.translate_texts(["a b c d e f"]) == ["a b c"]  # cut at the length limit, before its </s>
    with pytest.raises(InputError, match="item 2: empty source"):
        t.translate_texts(["a b", ""])
