"""The CTranslate2 export (model/ctranslate.py) and the engine choice (model/engines.py) on untrained models,
so no training is needed: the export must reproduce our model's teacher-forced log-probabilities token for
token (positions fixed and learned, past a learned table's end, tied and untied weights, unequal layer
counts), refuse what it cannot reproduce, publish atomically, and the Translator must pick the engine the
config and the model directory say, with an error naming what is missing when ctranslate2 is asked for."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from container import serving
from model import ctranslate, engines
from model.checkpoint import load_model, save_model_files, save_params
from model.constants import PARAMS_FILE
from model.hyperparameters import parse_hyperparameters
from model.inference_config import InferenceConfig
from model.model import build_model
from model.translator import Translator
from tests.system.copy_task import copy_vocab

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRANSFORMER = {"encoder_type": "transformer", "decoder_type": "transformer", "transformer_model_size": "32",
               "transformer_attention_heads": "4", "transformer_feed_forward_num_hidden": "48",
               "max_seq_len_source": "20", "max_seq_len_target": "20"}


def random_model(root: Path, seed: int = 0, **hp: str) -> Path:
    """An untrained model directory; norms and biases are perturbed so that no parameter is at its neutral
    initial value (a wrong mapping of a norm or a bias would otherwise go unnoticed)."""
    torch.manual_seed(seed)
    params = parse_hyperparameters({**TRANSFORMER, **hp})
    vocab = copy_vocab()
    model = build_model(params, len(vocab), len(vocab))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
    save_model_files(root, params, vocab, vocab)
    save_params(root, model)
    return root


def ours_log_probs(model_dir: Path, sources: list[list[int]], targets: list[list[int]]) -> list[np.ndarray]:
    """Teacher-forced log-probabilities of each target token and its </s>, from our model."""
    loaded = load_model(model_dir)
    out = []
    for s, t in zip(sources, targets):
        src, lengths = torch.tensor([[*s, 3]]), torch.tensor([len(s) + 1])
        with torch.no_grad():
            logp = torch.log_softmax(loaded.model(src, lengths, torch.tensor([[2, *t]])).float(), -1)[0]
        out.append(logp[torch.arange(len(t) + 1), torch.tensor([*t, 3])].numpy())
    return out


def ct2_log_probs(export: Path, sources: list[list[int]], targets: list[list[int]], compute_type: str = "float32",
                  model_dir: Path | None = None) -> list[np.ndarray]:
    """CTranslate2's log-probabilities of the same tokens, from the export (a model directory: its export)."""
    import ctranslate2

    if model_dir is None:
        model_dir, export = export, export / ctranslate.EXPORT_DIR
    tokens = load_model(model_dir).target_tokens
    translator = ctranslate2.Translator(str(export), compute_type=compute_type, intra_threads=1)
    results = translator.score_batch([[tokens[i] for i in s] + ["</s>"] for s in sources],
                                     [[tokens[i] for i in t] for t in targets])
    return [np.array(r.log_probs) for r in results]


def pairs(n: int, seed: int, hi: int = 12) -> tuple[list[list[int]], list[list[int]]]:
    rng = np.random.default_rng(seed)
    make = lambda: rng.integers(4, 20, int(rng.integers(1, hi))).tolist()  # noqa: E731
    return [make() for _ in range(n)], [make() for _ in range(n)]


@pytest.mark.parametrize("hp", [
    {"num_layers_encoder": "2", "num_layers_decoder": "1"},
    {"num_layers_encoder": "1", "num_layers_decoder": "3", "transformer_positional_embedding_type": "learned",
     "weight_tying": "true", "weight_tying_type": "src_trg_softmax"},
    {"weight_tying": "true", "weight_tying_type": "trg_softmax", "transformer_attention_heads": "8"},
], ids=["fixed-untied-2x1", "learned-src_trg_softmax-1x3", "fixed-trg_softmax-8heads"])
def test_export_reproduces_our_log_probabilities(tmp_path, hp):
    model_dir = random_model(tmp_path / "m", **hp)
    ctranslate.export(model_dir)
    sources, targets = pairs(12, seed=1)
    if hp.get("transformer_positional_embedding_type") == "learned":
        # past the learned table's 22 rows, where ours reuses the last row
        sources.append(list(range(4, 20)) * 2)
        targets.append(list(range(19, 3, -1)) + [5] * 10)
    for ours, theirs in zip(ours_log_probs(model_dir, sources, targets),
                            ct2_log_probs(model_dir, sources, targets), strict=True):
        np.testing.assert_allclose(theirs, ours, atol=1e-4)


def test_export_layout_and_record(tmp_path):
    model_dir = random_model(tmp_path / "m")
    path = ctranslate.export(model_dir, compute_type="int8_float32", max_positions=64)
    assert path == model_dir / "ctranslate2"
    assert {"model.bin", "config.json", "export.json", "shared_vocabulary.json"} <= {p.name for p in path.iterdir()}
    info = json.loads((path / "export.json").read_text())
    assert info["compute_type"] == "int8_float32" and info["max_positions"] == 64
    assert info["params_sha256"] == ctranslate.params_sha256(model_dir)
    config = json.loads((path / "config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["unk_token"]) == ("<s>", "</s>", "<unk>")
    assert json.loads((path / "shared_vocabulary.json").read_text())[:4] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert [p.name for p in model_dir.iterdir() if p.name.startswith(".")] == []
    assert {"model.bin", "config.json", "shared_vocabulary.json"} <= {p.name for p in (path / "int8").iterdir()}


def test_int8_weights_are_7_bit_and_close(tmp_path):
    """The int8 variant's weights stay within ±63 (no saturation in the u8s8 GEMM of CPUs without VNNI), and
    int8 decoding loads them: its log-probabilities are close to ours even on an untrained model."""
    model_dir = random_model(tmp_path / "m")
    ctranslate.export(model_dir, max_positions=24)  # a small position table (float32 in both): weights dominate
    raw = (model_dir / "ctranslate2/int8/model.bin").stat().st_size
    assert raw < (model_dir / "ctranslate2/model.bin").stat().st_size / 2  # int8, not float32
    t = load(model_dir, engine="ctranslate2", compute_type="int8")
    assert t.engine.weights == model_dir / "ctranslate2/int8" and "7-bit" in repr(t.engine)
    assert load(model_dir, engine="ctranslate2", compute_type="float32").engine.weights == model_dir / "ctranslate2"
    sources, targets = pairs(12, seed=2)
    ours = np.concatenate(ours_log_probs(model_dir, sources, targets))
    int8 = np.concatenate(ct2_log_probs(model_dir / "ctranslate2/int8", sources, targets, "int8", model_dir))
    assert np.abs(int8 - ours).mean() < 0.02, np.abs(int8 - ours).mean()


def test_export_refuses_rnn_models_naming_the_types(tmp_path):
    model_dir = random_model(tmp_path / "m", encoder_type="rnn", decoder_type="rnn", rnn_num_hidden="32",
                             num_embed_source="16", num_embed_target="16")
    with pytest.raises(ctranslate.ExportError, match="needs encoder_type=transformer and decoder_type=transformer, "
                                                     "this model is rnn/rnn"):
        ctranslate.export(model_dir)
    assert sorted(p.name for p in model_dir.iterdir() if "ctranslate2" in p.name) == []


def test_export_refuses_a_mixed_model(tmp_path):
    model_dir = random_model(tmp_path / "m", encoder_type="rnn", rnn_num_hidden="32", num_embed_source="16")
    with pytest.raises(ctranslate.ExportError, match="this model is rnn/transformer"):
        ctranslate.export(model_dir)


def test_a_failed_export_leaves_the_previous_one(tmp_path, monkeypatch):
    model_dir = random_model(tmp_path / "m")
    ctranslate.export(model_dir)
    before = (model_dir / "ctranslate2/model.bin").read_bytes()
    random_model(model_dir, seed=5)  # new weights, same directory

    def broken(path: str) -> None:
        Path(path, "model.bin").write_bytes(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr("ctranslate2.specs.TransformerSpec.save", lambda self, path: broken(path))
    with pytest.raises(OSError, match="disk full"):
        ctranslate.export(model_dir)
    assert (model_dir / "ctranslate2/model.bin").read_bytes() == before
    assert [p.name for p in model_dir.iterdir() if p.name.startswith(".")] == []
    monkeypatch.undo()
    ctranslate.export(model_dir)  # a second export replaces the first whole
    assert (model_dir / "ctranslate2/model.bin").read_bytes() != before
    assert [p.name for p in model_dir.iterdir() if p.name.startswith(".")] == []


def test_cli(tmp_path, capsys):
    model_dir = random_model(tmp_path / "m")
    assert ctranslate.main(["export", str(model_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["export"] == str(model_dir / "ctranslate2")
    rnn = random_model(tmp_path / "rnn", encoder_type="rnn", decoder_type="rnn", rnn_num_hidden="32",
                       num_embed_source="16", num_embed_target="16")
    assert ctranslate.main(["export", str(rnn)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "this model is rnn/rnn" in err[-1]
    assert ctranslate.main(["export", str(tmp_path / "nothing")]) == 1
    assert "has no params.pt" in capsys.readouterr().err


# --- choosing the engine ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    model_dir = random_model(tmp_path_factory.mktemp("exported") / "m")
    ctranslate.export(model_dir)
    return model_dir


def load(model_dir: Path, **config) -> Translator:
    return Translator.load(model_dir, InferenceConfig(text_format="tokens", **config), "cpu")


def test_auto_picks_ctranslate2_when_the_model_holds_an_export(exported, tmp_path):
    t = load(exported)
    assert isinstance(t.engine, ctranslate.CTranslate2Engine) and t.engine.compute_type == "int8"  # the export's
    assert load(exported, compute_type="float32").engine.compute_type == "float32"
    assert load(exported, engine="torch").engine is None
    plain = shutil.copytree(exported, tmp_path / "plain", ignore=shutil.ignore_patterns("ctranslate2"))
    assert load(plain).engine is None


def test_engine_settings_from_the_environment(exported):
    config = InferenceConfig.from_env({"SEQ2SEQ_ENGINE": "ctranslate2", "SEQ2SEQ_COMPUTE_TYPE": "float32"})
    assert (config.engine, config.compute_type, config.quantize) == ("ctranslate2", "float32", None)
    assert InferenceConfig.from_env(config.to_env()) == config
    assert InferenceConfig.from_env({"SEQ2SEQ_QUANTIZE": "int8"}).quantize == "int8"
    assert InferenceConfig().to_env() == {"SEQ2SEQ_BATCH_SIZE": "32", "SEQ2SEQ_UNKNOWN_TOKENS": "unk",
                                          "SEQ2SEQ_ON_ERROR": "fail"}  # unset engine fields add nothing
    t = Translator.load(exported, config, "cpu")
    assert t.engine.compute_type == "float32"
    for env, expected in (({"SEQ2SEQ_ENGINE": "fast"}, "SEQ2SEQ_ENGINE='fast': engine must be one of auto, torch, "
                                                       "ctranslate2"),
                          ({"SEQ2SEQ_COMPUTE_TYPE": "int4"}, "SEQ2SEQ_COMPUTE_TYPE='int4': compute_type must be"),
                          ({"SEQ2SEQ_QUANTIZE": "fp8"}, "SEQ2SEQ_QUANTIZE='fp8': quantize must be one of none, int8")):
        with pytest.raises(ValueError) as e:
            InferenceConfig.from_env(env)
        assert expected in str(e.value)


def test_ctranslate2_asked_for_without_an_export(exported, tmp_path):
    plain = shutil.copytree(exported, tmp_path / "plain", ignore=shutil.ignore_patterns("ctranslate2"))
    with pytest.raises(ctranslate.EngineUnavailable, match=r"has no ctranslate2/ export: run `python -m "
                                                           r"model.ctranslate export"):
        load(plain, engine="ctranslate2")
    with pytest.raises(ValueError, match="has no ctranslate2/ export"):
        serving.check_model_dir(plain, InferenceConfig(engine="ctranslate2"))
    serving.check_model_dir(exported, InferenceConfig(engine="ctranslate2"))


def test_ctranslate2_asked_for_an_rnn_model(tmp_path):
    rnn = random_model(tmp_path / "rnn", encoder_type="rnn", decoder_type="rnn", rnn_num_hidden="32",
                       num_embed_source="16", num_embed_target="16")
    with pytest.raises(ctranslate.EngineUnavailable, match=r"needs a transformer model; .* is rnn/rnn"):
        load(rnn, engine="ctranslate2")
    with pytest.raises(ValueError, match="needs a transformer model"):
        serving.check_model_dir(rnn, InferenceConfig(engine="ctranslate2"))


def test_library_missing(exported, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # `import ctranslate2` raises ImportError
    with pytest.raises(ctranslate.EngineUnavailable, match="the ctranslate2 library is not installed"):
        load(exported, engine="ctranslate2")
    with pytest.raises(ValueError, match="the ctranslate2 library is not installed"):
        serving.check_model_dir(exported, InferenceConfig(engine="ctranslate2"))
    with caplog.at_level(logging.WARNING, "model.engines"):
        t = load(exported)  # auto: torch, saying why
    assert t.engine is None
    assert "ctranslate2 is not used, decoding with torch: the ctranslate2 library is not installed" in caplog.text
    assert t.translate_texts(["a b c"])  # and it translates


def test_a_stale_export_is_not_used(exported, tmp_path, caplog):
    model_dir = shutil.copytree(exported, tmp_path / "m")
    random_model(tmp_path / "other", seed=9)
    shutil.copy(tmp_path / "other" / PARAMS_FILE, model_dir / PARAMS_FILE)  # retrained, export not redone
    with pytest.raises(ctranslate.EngineUnavailable, match=r"exported from other weights .* export again"):
        load(model_dir, engine="ctranslate2")
    with caplog.at_level(logging.WARNING, "model.engines"):
        assert load(model_dir).engine is None
    assert "sha256 differs" in caplog.text


def test_settings_ctranslate2_cannot_honour(exported, tmp_path, caplog):
    with pytest.raises(ValueError, match="quantize=int8 quantizes the torch engine"):
        load(exported, engine="ctranslate2", quantize="int8")
    with pytest.raises(ValueError, match="SEQ2SEQ_QUANTIZE=int8 quantizes the torch engine"):
        serving.check_model_dir(exported, InferenceConfig(engine="ctranslate2", quantize="int8"))
    assert load(exported, quantize="int8").engine is None  # auto + quantize: the torch engine, quantized
    model_dir = shutil.copytree(exported, tmp_path / "beta")
    hp = json.loads((model_dir / "hyperparameters.json").read_text())
    (model_dir / "hyperparameters.json").write_text(json.dumps({**hp, "length_penalty_beta": "5"}))
    with pytest.raises(ctranslate.EngineUnavailable, match="cannot apply length_penalty_beta=5"):
        load(model_dir, engine="ctranslate2")
    with caplog.at_level(logging.WARNING, "model.engines"):
        assert load(model_dir).engine is None
    assert "length_penalty_beta=5 is not CTranslate2's penalty" in caplog.text


def test_outputs_past_the_exported_positions_are_decoded_by_torch(tmp_path, caplog):
    model_dir = random_model(tmp_path / "m")
    ctranslate.export(model_dir, max_positions=24)
    texts = ["a b c d e f g h", "p o n m"]
    torch_out = load(model_dir, engine="torch", beam_size=1, max_output_length=30).translate_texts(texts)
    t = load(model_dir, engine="ctranslate2", compute_type="float32", beam_size=1, max_output_length=30)
    with caplog.at_level(logging.DEBUG, "model.engines"):
        assert t.translate_texts(texts) == torch_out
    assert "max_output_length 30 is past the export's 24 positions" in caplog.text
    short = load(model_dir, engine="ctranslate2", compute_type="float32", beam_size=1, max_output_length=20)
    assert short.translate_texts(texts) == load(model_dir, engine="torch", beam_size=1,
                                                max_output_length=20).translate_texts(texts)


def test_quantize_int8_is_cpu_only(exported):
    loaded = load_model(exported)
    with pytest.raises(ValueError, match="runs on CPU only"):
        engines.prepare(loaded, InferenceConfig(engine="torch", quantize="int8"), torch.device("cuda"))


def test_the_training_entrypoint_checks_its_export_request_up_front(monkeypatch):
    from model.train import wants_ctranslate2_export

    transformer = parse_hyperparameters(TRANSFORMER)
    rnn = parse_hyperparameters({})
    assert not wants_ctranslate2_export({}, rnn)
    assert not wants_ctranslate2_export({"SEQ2SEQ_CTRANSLATE2_EXPORT": "false"}, rnn)
    assert wants_ctranslate2_export({"SEQ2SEQ_CTRANSLATE2_EXPORT": "true"}, transformer)
    with pytest.raises(ValueError, match="SEQ2SEQ_CTRANSLATE2_EXPORT='maybe': expected true or false"):
        wants_ctranslate2_export({"SEQ2SEQ_CTRANSLATE2_EXPORT": "maybe"}, transformer)
    with pytest.raises(ValueError, match="needs encoder_type=transformer and decoder_type=transformer, not rnn/rnn"):
        wants_ctranslate2_export({"SEQ2SEQ_CTRANSLATE2_EXPORT": "true"}, rnn)
    monkeypatch.setitem(sys.modules, "ctranslate2", None)
    with pytest.raises(ValueError, match="ctranslate2 library is not installed in this image"):
        wants_ctranslate2_export({"SEQ2SEQ_CTRANSLATE2_EXPORT": "1"}, transformer)
