"""Hyperparameter contract: the built-in algorithm's names and defaults, SageMaker's string encoding,
precise errors for bad values and unknown names, cross-field checks and the round trip."""

from __future__ import annotations

import dataclasses
import logging
import pickle

import pytest

from model import hyperparameters as hpmod
from model.hyperparameters import (
    EXTENSIONS,
    HyperparameterError,
    Hyperparameters,
    UnknownHyperparameterError,
    describe_markdown,
    parse_hyperparameters,
    to_strings,
    validate,
)

# The built-in algorithm's table (SageMaker's seq2seq documentation), as SageMaker would spell the defaults.
BUILT_IN_DEFAULTS = {
    "batch_size": 64,
    "beam_size": 5,
    "bleu_sample_size": 0,
    "bucket_width": 10,
    "bucketing_enabled": True,
    "checkpoint_frequency_num_batches": 1000,
    "checkpoint_threshold": 3,
    "clip_gradient": 1.0,
    "cnn_activation_type": "glu",
    "cnn_hidden_dropout": 0.0,
    "cnn_kernel_width_decoder": 5,
    "cnn_kernel_width_encoder": 3,
    "cnn_num_hidden": 512,
    "decoder_type": "rnn",
    "embed_dropout_source": 0.0,
    "embed_dropout_target": 0.0,
    "encoder_type": "rnn",
    "fixed_rate_lr_half_life": 10,
    "learning_rate": 0.0003,
    "loss_type": "cross-entropy",
    "lr_scheduler_type": "plateau_reduce",
    "max_num_batches": -1,
    "max_num_epochs": None,
    "max_seq_len_source": 100,
    "max_seq_len_target": 100,
    "min_num_epochs": 0,
    "momentum": None,
    "num_embed_source": 512,
    "num_embed_target": 512,
    "num_layers_decoder": 1,
    "num_layers_encoder": 1,
    "optimized_metric": "perplexity",
    "optimizer_type": "adam",
    "plateau_reduce_lr_factor": 0.5,
    "plateau_reduce_lr_threshold": 3,
    "rnn_attention_in_upper_layers": True,
    "rnn_attention_num_hidden": None,  # = rnn_num_hidden
    "rnn_attention_type": "mlp",
    "rnn_cell_type": "lstm",
    "rnn_decoder_hidden_dropout": 0.0,
    "rnn_decoder_state_init": "last",
    "rnn_first_residual_layer": 2,
    "rnn_num_hidden": 1024,
    "rnn_residual_connections": False,
    "training_metric": "perplexity",
    "weight_decay": 0.0,
    "weight_init_scale": 2.34,
    "weight_init_type": "xavier",
    "xavier_factor_type": "in",
}

# The choices the built-in table lists, plus ours.
CHOICES = {
    "cnn_activation_type": {"glu", "relu", "softrelu", "sigmoid", "tanh"},
    "decoder_type": {"rnn", "cnn", "transformer"},
    "encoder_type": {"rnn", "cnn", "transformer"},
    "loss_type": {"cross-entropy"},
    "lr_scheduler_type": {"plateau_reduce", "fixed_rate_inv_t", "fixed_rate_inv_sqrt_t"},
    "optimized_metric": {"perplexity", "accuracy", "bleu"},
    "optimizer_type": {"adam", "sgd", "rmsprop"},
    "rnn_attention_type": {"dot", "fixed", "mlp", "bilinear"},
    "rnn_cell_type": {"lstm", "gru"},
    "rnn_decoder_state_init": {"last", "avg", "zero"},
    "training_metric": {"perplexity", "accuracy"},
    "weight_init_type": {"uniform", "xavier"},
    "xavier_factor_type": {"in", "out", "avg"},
    "transformer_positional_embedding_type": {"fixed", "learned"},
    "weight_tying_type": {"trg_softmax", "src_trg", "src_trg_softmax"},
    "batch_type": {"sentence", "word"},
    "precision": {"auto", "bf16", "fp32"},
    "torch_compile": {"auto", "on", "off"},
}

AWS_EN_DE_EXAMPLE = {
    "max_seq_len_source": "60",
    "max_seq_len_target": "60",
    "optimized_metric": "bleu",
    "batch_size": "64",
    "checkpoint_frequency_num_batches": "1000",
    "rnn_num_hidden": "512",
    "num_layers_encoder": "1",
    "num_layers_decoder": "1",
    "num_embed_source": "512",
    "num_embed_target": "512",
    "checkpoint_threshold": "3",
    "max_num_batches": "2100",
}

FIELD_NAMES = [f.name for f in dataclasses.fields(Hyperparameters)]


def error_for(raw: dict[str, object]) -> HyperparameterError:
    with pytest.raises(HyperparameterError) as info:
        parse_hyperparameters(raw)  # type: ignore[arg-type]
    return info.value


# --- names and defaults --------------------------------------------------------------------------


def test_defaults_equal_the_built_in_table():
    hp = parse_hyperparameters({})
    assert hp == Hyperparameters()
    for name, expected in BUILT_IN_DEFAULTS.items():
        assert getattr(hp, name) == expected, name
    assert hp.attention_num_hidden == 1024


def test_every_built_in_name_is_a_field_and_the_rest_are_the_extensions():
    assert set(BUILT_IN_DEFAULTS) <= set(FIELD_NAMES)
    assert set(EXTENSIONS) == set(FIELD_NAMES) - set(BUILT_IN_DEFAULTS)
    assert {"transformer_model_size", "label_smoothing", "learning_rate_warmup", "precision"} <= set(EXTENSIONS)


def test_aws_english_german_example_parses():
    hp = parse_hyperparameters(AWS_EN_DE_EXAMPLE)
    assert (hp.max_seq_len_source, hp.max_seq_len_target) == (60, 60)
    assert hp.optimized_metric == "bleu"
    assert (hp.batch_size, hp.checkpoint_frequency_num_batches, hp.checkpoint_threshold) == (64, 1000, 3)
    assert hp.rnn_num_hidden == 512 and hp.attention_num_hidden == 512
    assert (hp.num_layers_encoder, hp.num_layers_decoder) == (1, 1)
    assert (hp.num_embed_source, hp.num_embed_target) == (512, 512)
    assert hp.max_num_batches == 2100
    assert hp.learning_rate == 0.0003  # untouched names keep their defaults


# --- value syntax --------------------------------------------------------------------------------


def test_value_syntax_per_type():
    hp = parse_hyperparameters(
        {
            "learning_rate": "1e-4",
            "clip_gradient": "-1",
            "weight_decay": ".5",
            "bucketing_enabled": "FALSE",
            "weight_tying": "True",
            "max_num_epochs": "None",
            "momentum": "NONE",
            "rnn_attention_num_hidden": "256",
            "bleu_sample_size": "-1",
        }
    )
    assert hp.learning_rate == pytest.approx(1e-4)
    assert hp.clip_gradient == -1.0 and isinstance(hp.clip_gradient, float)
    assert hp.weight_decay == 0.5
    assert hp.bucketing_enabled is False and hp.weight_tying is True
    assert hp.max_num_epochs is None and hp.momentum is None
    assert hp.rnn_attention_num_hidden == 256 and hp.attention_num_hidden == 256
    assert hp.bleu_sample_size == -1


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("batch_size", "64.0", "must be an integer"),
        ("batch_size", "sixty-four", "must be an integer"),
        ("batch_size", "none", "must be an integer"),
        ("max_num_epochs", "2.5", "must be an integer or none"),
        ("rnn_attention_num_hidden", "none", "must be an integer"),
        ("bucketing_enabled", "1", "must be true or false"),
        ("bucketing_enabled", "yes", "must be true or false"),
        ("learning_rate", "fast", "must be a number"),
        ("learning_rate", "nan", "must be a number"),
        ("clip_gradient", "1e999", "must be finite"),
    ],
)
def test_malformed_values_name_the_hyperparameter(name, text, reason):
    err = error_for({name: text})
    assert (err.name, err.value) == (name, text)
    assert f'hyperparameter {name}="{text}"' in str(err)
    assert reason in str(err)


def test_json_numbers_booleans_and_null_read_as_their_json_spelling():
    hp = parse_hyperparameters(
        {"batch_size": 32, "learning_rate": 0.001, "bucketing_enabled": False, "max_num_epochs": None}  # type: ignore[dict-item]
    )
    assert (hp.batch_size, hp.learning_rate, hp.bucketing_enabled, hp.max_num_epochs) == (32, 0.001, False, None)
    assert parse_hyperparameters({"clip_gradient": 2}).clip_gradient == 2.0  # type: ignore[dict-item]
    assert "must be an integer" in str(error_for({"batch_size": 64.0}))  # as "64.0" would be
    assert "must be an integer" in str(error_for({"batch_size": True}))
    assert "must be a string" in str(error_for({"batch_size": [64]}))


# --- choices and ranges --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_choice_fields_accept_their_choices_and_reject_others(name):
    assert set(hpmod._spec(name).choices) == CHOICES[name]
    for choice in CHOICES[name]:
        assert getattr(parse_hyperparameters({name: choice}), name) == choice
    err = error_for({name: "bogus"})
    assert err.name == name and err.value == "bogus"
    assert str(err).startswith(f'hyperparameter {name}="bogus": must be one of ')
    assert all(choice in str(err) for choice in CHOICES[name])


def test_every_string_field_is_a_choice_field():
    assert {n for n in FIELD_NAMES if isinstance(getattr(Hyperparameters(), n), str)} == set(CHOICES)


def test_choice_error_message_example():
    err = error_for({"rnn_cell_type": "lstmm"})
    assert str(err) == 'hyperparameter rnn_cell_type="lstmm": must be one of lstm, gru'


@pytest.mark.parametrize(
    ("name", "bad", "good"),
    [
        ("batch_size", "0", "1"),
        ("beam_size", "-3", "1"),
        ("rnn_num_hidden", "0", "2"),
        ("bleu_sample_size", "-2", "-1"),
        ("min_num_epochs", "-1", "0"),
        ("max_num_epochs", "0", "1"),
        ("max_num_batches", "0", "-1"),
        ("max_num_batches", "-2", "1"),
        ("learning_rate", "0", "1e-9"),
        ("learning_rate", "-0.1", "0.2"),
        ("cnn_hidden_dropout", "1", "0.999"),
        ("embed_dropout_source", "-0.1", "0"),
        ("rnn_decoder_hidden_dropout", "1.0", "0.5"),
        ("transformer_dropout", "1", "0"),
        ("label_smoothing", "1", "0.1"),
        ("plateau_reduce_lr_factor", "0", "1"),
        ("momentum", "1", "0.9"),
        ("weight_decay", "-1e-5", "0"),
        ("learning_rate_warmup", "-1", "0"),
        ("seed", "-1", "0"),
    ],
)
def test_ranges(name, bad, good):
    err = error_for({name: bad})
    assert err.name == name and f'{name}="{bad}"' in str(err) and "must be" in str(err)
    assert getattr(parse_hyperparameters({name: good}), name) == float(good)


def test_out_of_range_message_says_what_is_allowed():
    assert str(error_for({"max_num_batches": "0"})) == (
        'hyperparameter max_num_batches="0": must be -1 or a positive integer'
    )
    assert str(error_for({"label_smoothing": "1.5"})).endswith("must be a float in [0, 1)")


# --- cross-field checks --------------------------------------------------------------------------


def test_rnn_encoder_needs_even_hidden_size():
    err = error_for({"rnn_num_hidden": "511"})
    assert err.name == "rnn_num_hidden" and "bidirectional" in str(err) and "511" in str(err)
    assert parse_hyperparameters({"rnn_num_hidden": "511", "encoder_type": "cnn"}).rnn_num_hidden == 511


@pytest.mark.parametrize("side", ["encoder_type", "decoder_type"])
def test_transformer_size_divisible_by_heads(side):
    raw = {side: "transformer", "transformer_model_size": "100", "transformer_attention_heads": "8"}
    err = error_for(raw)
    assert err.name == "transformer_model_size" and "transformer_attention_heads" in str(err)
    assert parse_hyperparameters({**raw, "transformer_attention_heads": "4"}).transformer_model_size == 100
    # irrelevant while no side is a transformer
    assert parse_hyperparameters({k: v for k, v in raw.items() if k != side}).transformer_model_size == 100


def test_max_epochs_not_below_min_epochs():
    err = error_for({"min_num_epochs": "5", "max_num_epochs": "4"})
    assert err.name == "max_num_epochs" and "min_num_epochs" in str(err)
    hp = parse_hyperparameters({"min_num_epochs": "5", "max_num_epochs": "5"})
    assert (hp.min_num_epochs, hp.max_num_epochs) == (5, 5)
    assert parse_hyperparameters({"min_num_epochs": "5", "max_num_epochs": "none"}).max_num_epochs is None


def test_xavier_needs_positive_scale_uniform_does_not():
    assert error_for({"weight_init_scale": "-0.5"}).name == "weight_init_scale"
    assert parse_hyperparameters({"weight_init_scale": "-0.5", "weight_init_type": "uniform"}).weight_init_scale == -0.5


def test_momentum_without_sgd_is_accepted_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="model.hyperparameters"):
        hp = parse_hyperparameters({"momentum": "0.9", "optimizer_type": "adam"})
    assert hp.momentum == 0.9
    assert any("momentum" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="model.hyperparameters"):
        parse_hyperparameters({"momentum": "0.9", "optimizer_type": "sgd"})
    assert not caplog.records


# --- names ---------------------------------------------------------------------------------------


def test_unknown_names_all_listed_with_suggestions():
    err = error_for({"rnn_num_hiden": "512", "zzz": "1", "batch_size": "8", "Learning_Rate": "0.1"})
    assert isinstance(err, UnknownHyperparameterError)
    assert err.names == ("Learning_Rate", "rnn_num_hiden", "zzz")
    assert err.suggestions == {"Learning_Rate": "learning_rate", "rnn_num_hiden": "rnn_num_hidden", "zzz": None}
    assert str(err) == (
        "unknown hyperparameter(s): Learning_Rate (did you mean learning_rate?), "
        "rnn_num_hiden (did you mean rnn_num_hidden?), zzz"
    )
    assert str(error_for({"rnn_num_hiden": "512"})) == (
        "unknown hyperparameter(s): rnn_num_hiden (did you mean rnn_num_hidden?)"
    )


def test_unknown_names_reported_before_bad_values():
    assert isinstance(error_for({"batch_size": "x", "bacth_size": "1"}), UnknownHyperparameterError)


def test_sagemaker_and_tuning_names_are_ignored():
    hp = parse_hyperparameters(
        {
            "_tuning_objective_metric": "validation:bleu",
            "sagemaker_program": "train.py",
            "sagemaker_container_log_level": "20",
            "batch_size": "32",
        }
    )
    assert hp == Hyperparameters(batch_size=32)
    assert isinstance(error_for({"tuning_objective_metric": "x"}), UnknownHyperparameterError)


def test_errors_pickle():
    for err in (error_for({"rnn_cell_type": "x"}), error_for({"foo": "1"})):
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is type(err) and str(copy) == str(err) and copy.name == err.name


# --- round trip, validate, docs ------------------------------------------------------------------


def test_to_strings_round_trip_defaults():
    strings = to_strings(Hyperparameters())
    assert all(isinstance(v, str) for v in strings.values())
    assert strings["max_num_epochs"] == "none" and strings["momentum"] == "none"
    assert "rnn_attention_num_hidden" not in strings
    assert set(strings) == set(FIELD_NAMES) - {"rnn_attention_num_hidden"}
    assert parse_hyperparameters(strings) == Hyperparameters()


def test_to_strings_round_trip_non_defaults():
    hp = Hyperparameters(
        learning_rate=1e-5,
        clip_gradient=-1.0,
        momentum=0.9,
        optimizer_type="sgd",
        max_num_epochs=7,
        rnn_attention_num_hidden=300,
        bucketing_enabled=False,
        encoder_type="transformer",
        decoder_type="cnn",
        transformer_model_size=96,
        transformer_attention_heads=12,
        weight_init_scale=0.1 + 0.2,  # a float whose repr has many digits
        label_smoothing=0.1,
        bleu_sample_size=-1,
    )
    strings = to_strings(hp)
    assert strings["learning_rate"] == "1e-05" and strings["bucketing_enabled"] == "false"
    assert strings["rnn_attention_num_hidden"] == "300"
    assert parse_hyperparameters(strings) == hp


def test_validate_checks_dataclasses_built_in_code():
    validate(Hyperparameters())
    with pytest.raises(HyperparameterError, match="rnn_cell_type"):
        validate(dataclasses.replace(Hyperparameters(), rnn_cell_type="lstmm"))
    with pytest.raises(HyperparameterError, match="batch_size"):
        validate(dataclasses.replace(Hyperparameters(), batch_size=0))
    with pytest.raises(HyperparameterError, match="must be an integer"):
        validate(dataclasses.replace(Hyperparameters(), batch_size="64"))  # type: ignore[arg-type]
    with pytest.raises(HyperparameterError, match="bidirectional"):
        validate(dataclasses.replace(Hyperparameters(), rnn_num_hidden=7))


def test_describe_markdown_has_one_row_per_field():
    text = describe_markdown()
    lines = text.strip().splitlines()
    assert lines[0].startswith("| name | default | allowed | built-in or extension |")
    rows = {line.split("|")[1].strip().strip("`"): line for line in lines[2:]}
    assert list(rows) == FIELD_NAMES
    assert all(line.count("|") == lines[0].count("|") for line in lines)  # no stray pipes in cells
    assert "| 64 | integer in [1, 1048576] | built-in |" in rows["batch_size"]
    assert "one of lstm, gru" in rows["rnn_cell_type"]
    assert "| rnn_num_hidden |" in rows["rnn_attention_num_hidden"]
    assert "| none |" in rows["max_num_epochs"]
    assert "transformer: extension" in rows["encoder_type"]
    assert all("| extension |" in rows[name] for name in EXTENSIONS)
    assert all("| built-in" in rows[name] for name in BUILT_IN_DEFAULTS)


@pytest.mark.parametrize("name,value", [
    ("rnn_num_hidden", "1000000000"), ("num_embed_source", "100000"), ("transformer_model_size", "65536"),
    ("num_layers_encoder", "1000"), ("max_seq_len_source", "1000000"), ("batch_size", "10000000"),
    ("learning_rate", "1e300"), ("beam_size", "100000"), ("weight_decay", "5"),
])
def test_values_no_real_model_uses_are_named_before_torch_allocates(name, value):
    """1e9 hidden units would surface as "can't allocate 256000000000 bytes" inside torch, minutes in."""
    with pytest.raises(HyperparameterError, match=rf"^hyperparameter {name}=\"{value}\": must be an? \w+ in ") as e:
        parse_hyperparameters({name: value})
    assert e.value.name == name


def test_the_aws_example_and_transformer_big_sizes_stay_allowed():
    parse_hyperparameters({"rnn_num_hidden": "1024", "num_embed_source": "512", "batch_size": "64"})
    parse_hyperparameters({"encoder_type": "transformer", "decoder_type": "transformer", "batch_type": "word",
                           "batch_size": "32768", "transformer_model_size": "1024",
                           "transformer_feed_forward_num_hidden": "4096", "transformer_attention_heads": "16",
                           "learning_rate": "1.0", "optimizer_type": "sgd"})


def test_a_model_folders_hyperparameters_are_read_or_the_file_is_named(tmp_path):
    (tmp_path / "hyperparameters.json").write_text('{"num_layers_encoder": "2", "rnn_num_hidden": "64"}')
    hp = hpmod.read_model_hyperparameters(tmp_path)
    assert (hp.num_layers_encoder, hp.rnn_num_hidden) == (2, 64)
    for text, reason in (('{"num_layers_encoder": "two"}', "num_layers_encoder"), ("{not json", "Expecting"),
                         ('{"no_such_name": "1"}', "no_such_name")):
        (tmp_path / "hyperparameters.json").write_text(text)
        with pytest.raises(ValueError, match=f"hyperparameters.json: the model's hyperparameters cannot be read: "
                                             f".*{reason}"):
            hpmod.read_model_hyperparameters(tmp_path)
    (tmp_path / "hyperparameters.json").unlink()
    with pytest.raises(ValueError, match=r"hyperparameters\.json: the model.s hyperparameters cannot be read: .*No s"):
        hpmod.read_model_hyperparameters(tmp_path)
