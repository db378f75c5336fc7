"""The int8 paths on trained tiny models: CTranslate2 on the Transformer copy model (exported here) against
our own search, float32 first (the same translations, scores and attention: the export is our model) then
int8 (close: at least 90% identical lines, BLEU within half a point); and torch.ao dynamic int8 on the RNN
copy model. Through the Translator and the serving codecs, as the endpoint and the batch transform use them.

Sources include lengths the copy models never saw (up to 14 tokens, trained on 3-10), where the models
are unsure and a numerical difference between the engines would change the argmax."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from model import ctranslate
from model.beam_search import beam_search, greedy_search, output_length_limits
from model.constants import JSON_CONTENT_TYPE, JSONLINES_CONTENT_TYPE
from model.inference_config import InferenceConfig
from model.metrics import corpus_bleu as bleu
from model.serving_codecs import invoke
from model.translator import Translator
from pipeline_tasks.transform import TransformConfig, transform
from tests.models import jsonlines

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SYMBOLS = "abcdefghijklmnop"


def texts(n: int, seed: int, lo: int = 1, hi: int = 14) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(SYMBOLS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


@pytest.fixture(scope="module")
def exported(transformer_copy_model: Path) -> Path:
    """The model directory as training left it: with the export SEQ2SEQ_CTRANSLATE2_EXPORT asked for."""
    info = ctranslate.read_export_info(transformer_copy_model)
    assert info is not None and info["params_sha256"] == ctranslate.params_sha256(transformer_copy_model)
    return transformer_copy_model


def load(model_dir: Path, **config) -> Translator:
    return Translator.load(model_dir, InferenceConfig(**config), "cpu")


def ours(t: Translator, sources, beam: int, attention: bool = False):
    """Our search called directly, one batch per 32 sources: the reference the engine is held against."""
    out = []
    for start in range(0, len(sources), 32):
        batch = sources[start:start + 32]
        lengths = [len(s.ids) + 1 for s in batch]
        src = torch.zeros(len(batch), max(lengths), dtype=torch.long)
        for row, s in enumerate(batch):
            src[row, :len(s.ids) + 1] = torch.tensor([*s.ids, 3])
        lens = torch.tensor(lengths)
        model, hp = t.loaded.model, t.loaded.hp
        limits = (t.max_output_length if t.config.max_output_length is not None  # what the Translator uses
                  else output_length_limits(lens, t.length_factor, t.max_output_length))
        if beam == 1:
            out += greedy_search(model, src, lens, limits, return_attention=attention)
        else:
            out += beam_search(model, src, lens, beam, limits, hp.length_penalty_alpha,
                               hp.length_penalty_beta, return_attention=attention)
    return out


def test_float32_greedy_is_our_greedy_search(exported):
    ct2 = load(exported, engine="ctranslate2", compute_type="float32", beam_size=1)
    sources = [ct2.source_from_text(s) for s in texts(300, seed=1)]
    reference = ours(ct2, sources, beam=1, attention=True)
    limits = output_length_limits(torch.tensor([len(s.ids) + 1 for s in sources]), ct2.length_factor,
                                  ct2.max_output_length).tolist()
    got = [ct2.engine.decode([s.ids for s in sources[i:i + 32]], 1, limits[i:i + 32], 1.0, 0.0, True)
           for i in range(0, len(sources), 32)]
    got = [t for batch in got for t in batch]
    same = [a.tokens == b.tokens for a, b in zip(reference, got)]
    assert sum(same) >= 297, f"{sum(same)} of 300 greedy outputs agree"
    for a, b, equal in zip(reference, got, same):
        if equal:
            # CTranslate2 renormalizes over the tokens other than <pad>/<s> that both searches exclude (ours
            # keeps the model's own log-probabilities): the trained model gives those two ~1e-4 to 1e-3 a
            # step, so the scores of the 300 outputs agree within a few hundredths
            assert abs(a.score - b.score) < 5e-2 and abs(a.normalized_score - b.normalized_score) < 5e-3
            np.testing.assert_allclose(np.array(b.attention), np.array(a.attention), atol=1e-4)


@pytest.mark.parametrize("beam", [3, 5])
def test_float32_beam_search_is_ours(exported, beam):
    # One fixed limit (the model's longest target): the copy task's length ratio has no spread, so its own
    # per-sentence limits are exactly the copy's length, and CTranslate2's beam treats a hypothesis that
    # reaches the limit unlike ours (greedy, exactly the same with per-sentence limits, is checked above).
    ct2 = load(exported, engine="ctranslate2", compute_type="float32", beam_size=beam, max_output_length=21)
    sources = [ct2.source_from_text(s) for s in texts(300, seed=2)]
    reference = [" ".join(ct2.loaded.target_tokens[i] for i in t.tokens) for t in ours(ct2, sources, beam)]
    got = [o.target for o in ct2.translate(sources)]
    same = sum(a == b for a, b in zip(reference, got))
    # the one rule that differs: CTranslate2 stops a sentence after beam_size finished hypotheses
    assert same >= 291, f"{same} of 300 beam-{beam} outputs agree"


@pytest.mark.parametrize("beam", [1, 5])
def test_int8_stays_close(exported, beam):
    inputs = texts(400, seed=3, lo=3, hi=10)  # what the model was trained on: it copies these
    fp32 = load(exported, engine="torch", beam_size=beam).translate_texts(inputs)
    int8 = load(exported, engine="ctranslate2", compute_type="int8", beam_size=beam).translate_texts(inputs)
    same = sum(a == b for a, b in zip(fp32, int8))
    # 7-bit weights (ctranslate.quantize_int8_7bit): with CTranslate2's own 8-bit ones this model kept only
    # 95% of its lines and lost 2 BLEU on this CPU (AVX2, no VNNI: the int8 GEMM saturates)
    assert same >= 388, f"only {same} of 400 int8 outputs are the float32 ones"
    assert bleu(int8, inputs) >= bleu(fp32, inputs) - 0.5, (bleu(int8, inputs), bleu(fp32, inputs))


def test_the_serving_contract_is_unchanged(exported):
    torch_t = load(exported, engine="torch", compute_type=None, beam_size=3)
    ct2 = load(exported, beam_size=3)  # auto: the export, int8 (its recorded compute type)
    assert ct2.engine is not None and ct2.engine.compute_type == "int8"
    inputs = texts(50, seed=4, lo=3, hi=8)
    body, ctype = invoke(ct2, jsonlines(inputs), JSONLINES_CONTENT_TYPE)
    got = [json.loads(line)["target"] for line in body.decode().splitlines()]
    want = [json.loads(line)["target"] for line in invoke(torch_t, jsonlines(inputs), JSONLINES_CONTENT_TYPE)[0]
            .decode().splitlines()]
    # line for line what the float32 engine answers (so in input order); how well the session's tiny model
    # copies at all depends on the CPU it trained on (44 to 50 of these 50 seen), so that is held to float32's
    assert ctype == JSONLINES_CONTENT_TYPE and len(got) == 50 and sum(a == b for a, b in zip(got, want)) >= 48
    assert sum(a == b for a, b in zip(got, inputs)) >= sum(a == b for a, b in zip(want, inputs)) - 2 >= 40
    request = {"instances": [{"data": "a b c d", "configuration": {"attention_matrix": "true"}}, {"data": "p o"}]}
    a = json.loads(invoke(ct2, json.dumps(request).encode(), JSON_CONTENT_TYPE)[0])["predictions"]
    b = json.loads(invoke(torch_t, json.dumps(request).encode(), JSON_CONTENT_TYPE)[0])["predictions"]
    # The engines agree; how well the session's tiny model copies depends on the CPU it trained on (this one
    # copies "p o" as "p o o" on some), so only the first, longer input is held to its copy.
    assert [p["target"] for p in a] == [p["target"] for p in b] and a[0]["target"] == "a b c d"
    assert a[0]["source_tokens"] == a[0]["target_tokens"] == ["a", "b", "c", "d"] and "matrix" not in a[1]
    matrix = np.array(a[0]["matrix"])
    assert matrix.shape == (4, 4) and np.abs(matrix - np.array(b[0]["matrix"])).max() < 0.05
    # max_output_length counts </s>: 3 tokens, cut before its </s>, as our search does
    short = load(exported, engine="ctranslate2", beam_size=1, max_output_length=3)
    assert short.translate_texts(["a b c d e f"]) == ["a b c"]


def test_batch_transform_picks_up_the_export(exported, tmp_path):
    inputs = texts(200, seed=5, lo=3, hi=10)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"source": s}) + "\n" for s in inputs))
    report = transform(exported, str(src), str(tmp_path / "out.jsonl"), TransformConfig(beam_size=1, batch_size=64),
                       device="cpu")
    assert report["engine"].startswith("ctranslate2 (cpu, int8, 7-bit int8 weights")
    out = [json.loads(line)["target"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    report = transform(exported, str(src), str(tmp_path / "torch.jsonl"),
                       TransformConfig(beam_size=1, batch_size=64, engine="torch"), device="cpu")
    assert report["engine"] == "torch"
    torch_out = [json.loads(line)["target"] for line in (tmp_path / "torch.jsonl").read_text().splitlines()]
    # int8 decodes as float32 does: 97 %, as test_int8_stays_close holds it (194 to 199 of 200 seen across CPUs)
    assert len(out) == 200 and sum(a == b for a, b in zip(torch_out, out)) >= 194
    # and copies as well (how well the tiny model copies at all depends on the CPU it was trained on)
    copied, copied_fp32 = (sum(a == b for a, b in zip(o, inputs)) for o in (out, torch_out))
    # (float32 copied 190 of 200 on one AVX-512 machine, 162 on another: the floor only says it is trained)
    assert copied >= copied_fp32 - 3 and copied_fp32 >= 150, (copied, copied_fp32)


# --- torch.ao dynamic int8 for the RNN --------------------------------------------------------------------

def test_rnn_quantized_int8_stays_close(copy_model):
    from torch.ao.nn.quantized import dynamic

    inputs = texts(300, seed=6, lo=3, hi=8)
    fp32 = load(copy_model, beam_size=3)
    int8 = Translator.load(copy_model, InferenceConfig.from_env({"SEQ2SEQ_QUANTIZE": "int8", "SEQ2SEQ_BEAM_SIZE": "3"}),
                           "cpu")
    assert int8.engine is None and fp32.engine is None
    kinds = {type(m) for m in int8.loaded.model.modules()}
    assert dynamic.LSTM in kinds and dynamic.Linear in kinds and torch.nn.LSTM not in kinds
    a, b = fp32.translate_texts(inputs), int8.translate_texts(inputs)
    assert sum(x == y for x, y in zip(a, b)) >= 285
    assert sum(x == y for x, y in zip(b, inputs)) >= 285
