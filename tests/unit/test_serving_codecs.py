"""model/serving_codecs.py's serving contract on bytes, without HTTP: the content types
(docs/ARCHITECTURE.md §4), order, attention matrices, truncation, the unknown-token and error policies, and
every refusal's status and message. The copy model echoes its input (a..p, 3–8 tokens reliably), so
each output can be checked against its own input; the WMT model covers the raw-text path."""

from __future__ import annotations

import io
import json

import pytest

from model import record_pb2, recordio
from model.constants import JSON_CONTENT_TYPE, JSONLINES_CONTENT_TYPE, RECORDIO_CONTENT_TYPE
from model.inference_config import InferenceConfig
from model.serving_codecs import RequestError, invoke, split_lines
from model.tokenizer import Tokenizer
from model.translator import Translator
from tests.conftest import NEWSTEST
from tests.models import jsonlines, records, sentences

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SYMBOLS = "abcdefghijklmnop"


def parse_jsonlines(body: bytes) -> list[dict]:
    return [json.loads(line) for line in body.decode("utf-8").splitlines()]


def parse_records(body: bytes) -> list[record_pb2.Record]:
    return [record_pb2.Record.FromString(p) for _, p in recordio.iter_frames(io.BytesIO(body), "response")]


@pytest.fixture(scope="module")
def translator(copy_model) -> Translator:
    return Translator.load(copy_model, InferenceConfig(), "cpu")


def with_config(copy_model, **config) -> Translator:
    return Translator.load(copy_model, InferenceConfig(**config), "cpu")


def refused(translator: Translator, body: bytes, content_type: str | None, accept: str | None = None) -> RequestError:
    with pytest.raises(RequestError) as e:
        invoke(translator, body, content_type, accept)
    return e.value


# --- the three content types ---------------------------------------------------------------------------

def test_jsonlines_one_target_per_line_in_order(translator):
    texts = sentences(40)
    body, ctype = invoke(translator, jsonlines(texts), JSONLINES_CONTENT_TYPE, JSONLINES_CONTENT_TYPE)
    assert ctype == JSONLINES_CONTENT_TYPE and body.endswith(b"\n")
    assert parse_jsonlines(body) == [{"target": t} for t in texts]


def test_jsonlines_framing_variants(translator):
    # no final newline, CRLF line ends, a charset parameter and an alias spelling of the media type
    texts = sentences(3, seed=1)
    body = b"\r\n".join(json.dumps({"source": t}).encode() for t in texts)
    out, ctype = invoke(translator, body, "application/jsonl; charset=utf-8")
    assert ctype == JSONLINES_CONTENT_TYPE and [o["target"] for o in parse_jsonlines(out)] == texts
    assert split_lines(b"x\ny\n") == [b"x", b"y"] and split_lines(b"x\r\n\r\n") == [b"x", b""]


def test_json_instances_and_attention_matrix(translator):
    texts = ["a b c d e", "p o n", "c c d"]
    request = {"instances": [
        {"data": texts[0], "configuration": {"attention_matrix": "true"}},
        {"data": texts[1]},
        {"data": texts[2], "configuration": {"attention_matrix": False}},
    ]}
    body, ctype = invoke(translator, json.dumps(request).encode(), JSON_CONTENT_TYPE, "application/json")
    assert ctype == JSON_CONTENT_TYPE
    predictions = json.loads(body)["predictions"]
    assert [p["target"] for p in predictions] == texts
    assert "matrix" not in predictions[1] and "matrix" not in predictions[2]
    first = predictions[0]
    matrix = first["matrix"]
    assert first["source_tokens"] == first["target_tokens"] == texts[0].split()
    assert len(matrix) == 5 and all(len(row) == 5 for row in matrix)  # rows: target tokens, columns: source
    for row in matrix:
        assert all(0.0 <= v <= 1.0 for v in row) and 0.5 < sum(row) <= 1.0 + 1e-5
    # the copy model attends to the token it copies
    assert [max(range(5), key=row.__getitem__) for row in matrix] == [0, 1, 2, 3, 4]


def test_attention_matrix_of_unequal_lengths(translator):
    # "a" alone is outside the copy model's training lengths: it answers with a different number of tokens,
    # and the matrix still has one row per target token and one column per source token
    request = {"instances": [{"data": "a", "configuration": {"attention_matrix": True}}]}
    prediction = json.loads(invoke(translator, json.dumps(request).encode(), JSON_CONTENT_TYPE)[0])["predictions"][0]
    assert len(prediction["matrix"]) == len(prediction["target"].split()) == len(prediction["target_tokens"])
    assert {len(row) for row in prediction["matrix"]} == {1}


def test_recordio_source_ids_to_target_ids(translator):
    vocab = translator.loaded.source_vocab
    texts = sentences(12, seed=4)
    ids = [[vocab[t] for t in text.split()] for text in texts]
    body, ctype = invoke(translator, records(ids), RECORDIO_CONTENT_TYPE, RECORDIO_CONTENT_TYPE)
    assert ctype == RECORDIO_CONTENT_TYPE
    out = parse_records(body)
    assert [list(r.features["target"].int32_tensor.values) for r in out] == ids
    assert [list(r.features["target"].int32_tensor.shape) for r in out] == [[len(i)] for i in ids]


def test_raw_text_is_tokenized_translated_and_detokenized(wmt_model):
    translator = Translator.load(wmt_model, InferenceConfig(beam_size=2, max_output_length=30), "cpu")
    tokenizer = Tokenizer.load(wmt_model)
    assert translator.text_format == "raw"
    texts = NEWSTEST.joinpath("newstest2017.en-de.en").read_text(encoding="utf-8").splitlines()[:4]
    request = {"instances": [{"data": t, "configuration": {"attention_matrix": "true"}} for t in texts]}
    predictions = json.loads(invoke(translator, json.dumps(request).encode(), JSON_CONTENT_TYPE)[0])["predictions"]
    lines = parse_jsonlines(invoke(translator, jsonlines(texts), JSONLINES_CONTENT_TYPE)[0])
    for text, p, line in zip(texts, predictions, lines):
        expected_source = tokenizer.encode(text, "source").split()[:translator.max_source_tokens]
        assert p["source_tokens"] == expected_source
        assert p["target"] == tokenizer.decode(" ".join(p["target_tokens"]), "target") == line["target"]
        assert len(p["matrix"]) == len(p["target_tokens"]) and {len(r) for r in p["matrix"]} == {len(expected_source)}


# --- truncation, unknown tokens, error policy ---------------------------------------------------------

def test_over_long_input_is_truncated_not_refused(translator):
    n = translator.max_source_tokens
    text = " ".join(SYMBOLS[i % 16] for i in range(n + 7))
    source = translator.source_from_text(text)
    assert source.truncated and len(source.ids) == n
    request = {"instances": [{"data": text, "configuration": {"attention_matrix": "true"}}]}
    prediction = json.loads(invoke(translator, json.dumps(request).encode(), JSON_CONTENT_TYPE)[0])["predictions"][0]
    assert prediction["source_tokens"] == text.split()[:n]
    assert {len(row) for row in prediction["matrix"]} == {n}
    records_out = parse_records(invoke(translator, records([[4 + i % 16 for i in range(n + 7)]]),
                                       RECORDIO_CONTENT_TYPE)[0])
    assert len(records_out) == 1 and not records_out[0].metadata


def test_unknown_tokens_map_to_unk_by_default(translator):
    out = parse_jsonlines(invoke(translator, jsonlines(["a b zz c"]), JSONLINES_CONTENT_TYPE)[0])
    assert len(out) == 1 and "target" in out[0]
    assert translator.source_from_text("a zz").ids == [4 + SYMBOLS.index("a"), 1]


def test_unknown_tokens_rejected_when_asked(copy_model):
    strict = with_config(copy_model, unknown_tokens="reject")
    e = refused(strict, jsonlines(["a b c", "d e f", "a zz c QQ"]), JSONLINES_CONTENT_TYPE)
    assert e.status == 400 and str(e).startswith("line 3: ") and "'zz'" in str(e) and "'QQ'" in str(e)
    assert parse_jsonlines(invoke(strict, jsonlines(["a b c"]), JSONLINES_CONTENT_TYPE)[0]) == [{"target": "a b c"}]


def test_on_error_record_keeps_every_slot(copy_model):
    lenient = with_config(copy_model, on_error="record")
    body = b'{"source": "a b c"}\n{"text": "x"}\nnot json\n{"source": ""}\n{"source": "d e f g"}\n'
    out = parse_jsonlines(invoke(lenient, body, JSONLINES_CONTENT_TYPE)[0])
    assert len(out) == 5
    assert out[0] == {"target": "a b c"} and out[4] == {"target": "d e f g"}
    assert list(out[1]) == list(out[2]) == list(out[3]) == ["error"]
    assert "source" in out[1]["error"] and "JSON" in out[2]["error"] and "empty" in out[3]["error"]

    request = {"instances": [{"data": "a b c"}, {"nodata": 1}, {"data": "e f g"}]}
    predictions = json.loads(invoke(lenient, json.dumps(request).encode(), JSON_CONTENT_TYPE)[0])["predictions"]
    assert predictions[0] == {"target": "a b c"} and predictions[2] == {"target": "e f g"}
    assert "data" in predictions[1]["error"]

    out_records = parse_records(invoke(lenient, records([[4, 5, 6], [999], [7, 8, 9]]), RECORDIO_CONTENT_TYPE)[0])
    assert [list(r.features["target"].int32_tensor.values) for r in out_records] == [[4, 5, 6], [], [7, 8, 9]]
    assert "999" in json.loads(out_records[1].metadata)["error"] and not out_records[0].metadata


# --- refusals: status and a message that says what and where ------------------------------------------

@pytest.mark.parametrize(("body", "content_type", "status", "expected"), [
    (b'{"instances": [', JSON_CONTENT_TYPE, 400, "not valid JSON"),
    (b"\xff\xfe", JSON_CONTENT_TYPE, 400, "not UTF-8"),
    (b'{"data": "a b c"}', JSON_CONTENT_TYPE, 400, '"instances"'),
    (b'{"instances": [{"data": "a b c"}, {"text": "a"}]}', JSON_CONTENT_TYPE, 400,
     'instances[1]: expected an object with "data"'),
    (b'{"instances": [{"data": "a b", "configuration": {"attention_matrix": "maybe"}}]}', JSON_CONTENT_TYPE, 400,
     "instances[0]: attention_matrix must be true or false"),
    (b'{"instances": [{"data": 7}]}', JSON_CONTENT_TYPE, 400, "instances[0]: expected a string"),
    (b'{"source": "a b"}\n{"source": "c d"}\n{"target": "a"}\n', JSONLINES_CONTENT_TYPE, 400,
     'line 3: expected an object with "source"'),
    (b'{"source": "a b"}\n{"source": \n', JSONLINES_CONTENT_TYPE, 400, "line 2: not valid JSON"),
    (b'{"source": "a b"}\n\n{"source": "c"}\n', JSONLINES_CONTENT_TYPE, 400, "line 2: empty line"),
    (b'{"source": "   "}\n', JSONLINES_CONTENT_TYPE, 400, "line 1: empty source"),
    (b'{"source": "a"}\n\xff\n', JSONLINES_CONTENT_TYPE, 400, "line 2: not UTF-8"),
    (b"", JSON_CONTENT_TYPE, 400, "not valid JSON"),
    (b"", JSONLINES_CONTENT_TYPE, 400, "empty request"),
    (b"", RECORDIO_CONTENT_TYPE, 400, "empty request"),
    (b"not recordio at all", RECORDIO_CONTENT_TYPE, 400, "request body"),
    (b"a b c", "text/plain", 415, "'text/plain' is not supported"),
    (b"a b c", None, 415, "(none)"),
    # valid UTF-8 and valid JSON syntax, yet the client's mistake: a lone surrogate, nesting too deep to
    # decode (json's RecursionError), an integer over Python's 4,300 digits (a plain ValueError)
    (b'{"source": "a b"}\n{"source": "a \\udc00 b"}\n', JSONLINES_CONTENT_TYPE, 400,
     "line 2: not valid Unicode: a lone surrogate U+DC00 at character 2"),
    (b'{"instances": [{"data": "a b"}, {"data": "\\ud800"}]}', JSON_CONTENT_TYPE, 400,
     "instances[1]: not valid Unicode: a lone surrogate U+D800 at character 0"),
    (b"[" * 100_000 + b"]" * 100_000, JSON_CONTENT_TYPE, 400,
     "request body is JSON nested too deeply to decode (arrays/objects: over 100 levels at character 100)"),
    (b'{"source": "a"}\n{"source": "a", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n", JSONLINES_CONTENT_TYPE, 400,
     "line 2: JSON nested too deeply to decode (arrays/objects: over 100 levels at character 120)"),
    (b'{"instances": [{"data": ' + b"9" * 4500 + b"}]}", JSON_CONTENT_TYPE, 400,
     "request body is JSON that cannot be decoded"),
    (b'{"source": ' + b"9" * 4500 + b"}\n", JSONLINES_CONTENT_TYPE, 400,
     "line 1: JSON that cannot be decoded: Exceeds the limit"),
])
def test_bad_requests(translator, body, content_type, status, expected):
    e = refused(translator, body, content_type)
    assert e.status == status and expected in str(e), str(e)


def test_lone_surrogates_and_deep_nesting_are_bad_items_in_record_mode(copy_model):
    lenient = with_config(copy_model, on_error="record")
    body = (b'{"source": "a b c"}\n{"source": "d \\ud800"}\n' + b"[" * 20_000 + b"]" * 20_000 + b"\n"
            b'{"source": "\\ud83d\\ude00"}\n{"source": "e f g"}\n')
    out = parse_jsonlines(invoke(lenient, body, JSONLINES_CONTENT_TYPE)[0])
    assert len(out) == 5 and out[0] == {"target": "a b c"} and out[4] == {"target": "e f g"}
    assert set(out[1]) == {"error"} and "U+D800" in out[1]["error"]
    assert set(out[2]) == {"error"} and "nested too deeply" in out[2]["error"]
    assert "target" in out[3]  # a surrogate *pair* is a real character (U+1F600): an unknown token, not an error
    request = {"instances": [{"data": "a b c"}, {"data": "\udfff x"}]}
    predictions = json.loads(invoke(lenient, json.dumps(request).encode(), JSON_CONTENT_TYPE)[0])["predictions"]
    assert predictions[0] == {"target": "a b c"} and "U+DFFF" in predictions[1]["error"]


def test_messages_do_not_echo_huge_or_deep_values(copy_model, translator):
    deep = "[" * 500 + "]" * 500  # decodes (under the recursion limit), but must not come back repr'd
    body = ('{"instances": [{"data": "a b", "configuration": {"attention_matrix": ' + deep + "}}]}").encode()
    e = refused(translator, body, JSON_CONTENT_TYPE)
    assert e.status == 400 and str(e) == "instances[0]: attention_matrix must be true or false, got list"
    strict = with_config(copy_model, unknown_tokens="reject")
    e = refused(strict, jsonlines(["a " + "z" * 100_000]), JSONLINES_CONTENT_TYPE)
    assert e.status == 400 and "'" + "z" * 40 + "…'" in str(e) and len(str(e)) < 200


def test_recordio_ids_the_model_does_not_have(translator):
    size = len(translator.loaded.source_vocab)
    for bad in (size, 2, 0, -3):
        e = refused(translator, records([[4, 5], [5, bad, 6]]), RECORDIO_CONTENT_TYPE)
        assert e.status == 400 and str(e).startswith("record 2: ") and str(bad) in str(e)
    e = refused(translator, records([[]]), RECORDIO_CONTENT_TYPE)
    assert e.status == 400 and "record 1: empty source" in str(e)
    no_source = record_pb2.Record()
    no_source.features["target"].int32_tensor.values.extend([4])
    e = refused(translator, recordio.frame(no_source.SerializeToString()), RECORDIO_CONTENT_TYPE)
    assert 'record 1: no features["source"]' in str(e)


@pytest.mark.parametrize("accept", ["text/csv", "application/json", "application/x-recordio-protobuf, text/plain"])
def test_accept_that_excludes_the_response_type(translator, accept):
    e = refused(translator, jsonlines(["a b c"]), JSONLINES_CONTENT_TYPE, accept)
    assert e.status == 406 and accept in str(e) and JSONLINES_CONTENT_TYPE in str(e)


@pytest.mark.parametrize("accept", ["*/*", "application/*", "text/html, application/jsonlines;q=0.9", ""])
def test_accept_that_allows_the_response_type(translator, accept):
    assert invoke(translator, jsonlines(["a b c"]), JSONLINES_CONTENT_TYPE, accept) == (b'{"target": "a b c"}\n',
                                                                                 JSONLINES_CONTENT_TYPE)
