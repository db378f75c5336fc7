"""The content-type codecs of the SageMaker serving contract (docs/ARCHITECTURE.md §4) on bytes, over a
:class:`~model.translator.Translator`: ``application/json`` instances, ``application/jsonlines``, and
RecordIO-protobuf Records (:func:`invoke`, :func:`translate_jsonlines`). They know nothing about HTTP, so
the batch transform step runs the very same functions in-process, and the server only maps
:class:`RequestError` to a status code.

A bad item never disappears: with ``on_error=fail`` the request fails with a message naming the line,
instance or record; with ``on_error=record`` its output slot carries ``{"error": …}`` instead.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from model.constants import JSON_CONTENT_TYPE, JSONLINES_CONTENT_TYPE, RECORDIO_CONTENT_TYPE
from model.translator import InputError, Output, Source, Translator, short_repr

CONTENT_TYPES = (JSON_CONTENT_TYPE, JSONLINES_CONTENT_TYPE, RECORDIO_CONTENT_TYPE)
# Spellings of JSON Lines seen in the wild; the SageMaker contract uses application/jsonlines.
_ALIASES = {"application/jsonl": JSONLINES_CONTENT_TYPE, "application/x-jsonlines": JSONLINES_CONTENT_TYPE,
            "application/json-lines": JSONLINES_CONTENT_TYPE}

# Where a JSON text nests deeper than this, a refusal points (json itself only raises RecursionError, some
# 1,000 levels down, without saying where); our requests nest 4 levels deep.
JSON_DEPTH_REPORTED = 100


class RequestError(ValueError):
    """The request as a whole is refused; ``status`` is the HTTP status a server answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- JSON in and out, shared by the content types ---------------------------------------------------

_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _deep_position(text: str, depth: int = JSON_DEPTH_REPORTED) -> int | None:
    """Where `text` first opens its (depth+1)-th nested array or object; strings are skipped whole. Only
    called after json has given up, so the scan costs nothing on good requests."""
    level = 0
    for m in _JSON_TOKENS.finditer(text):
        c = m.group()
        if c in "[{":
            level += 1
            if level > depth:
                return m.start()
        elif c in "]}":
            level -= 1
    return None


def load_json(text: str) -> Any:
    """``json.loads`` whose every failure on bad input is an InputError saying what and where: invalid
    JSON, nesting too deep for the decoder (json raises RecursionError, a 500 if it escapes), integers
    too long to convert (Python's 4,300-digit limit raises a plain ValueError)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e}") from None
    except RecursionError:
        where = _deep_position(text)
        at = f": over {JSON_DEPTH_REPORTED} levels at character {where}" if where is not None else ""
        raise InputError(f"JSON nested too deeply to decode (arrays/objects{at})") from None
    except ValueError as e:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise InputError(f"JSON that cannot be decoded: {e}") from None


def encode_jsonlines(objects: Sequence[Mapping[str, Any]]) -> bytes:
    """One JSON object per line, UTF-8. ``backslashreplace`` is a guard: outputs and messages never carry a
    lone surrogate, but if one did, the line would still be written (escaped) instead of failing the batch."""
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objects).encode("utf-8", "backslashreplace")


# --- the content types ---------------------------------------------------------------------------------

def media_type(header: str | None) -> str:
    """``application/jsonlines; charset=utf-8`` -> ``application/jsonlines`` (aliases folded)."""
    value = (header or "").split(";", 1)[0].strip().lower()
    return _ALIASES.get(value, value)


def _accept(content_type: str, accept: str | None) -> None:
    """The response type is the request's type; refuse an Accept header that excludes it."""
    if not accept:
        return
    wanted = [media_type(a) for a in accept.split(",")]
    if content_type in wanted or any(a in ("*/*", "application/*") for a in wanted):
        return
    raise RequestError(406, f"cannot answer a {content_type} request with {accept}: responses are {content_type}")


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    # not repr(value): a nested list would be echoed in full, and a deep one would raise RecursionError
    shown = short_repr(value) if isinstance(value, str) else type(value).__name__
    raise InputError(f"attention_matrix must be true or false, got {shown}")


def _translate_items(translator: Translator, items: list[Source | InputError], attention: list[bool],
                     on_batch: Callable[[int], None] | None = None) -> list[Output | InputError]:
    good = [i for i, item in enumerate(items) if isinstance(item, Source)]
    if on_batch is not None and len(good) < len(items):
        on_batch(len(items) - len(good))  # the bad items are done already
    outputs = translator.translate([items[i] for i in good], [attention[i] for i in good],  # type: ignore[misc]
                                   on_batch=on_batch)
    result: list[Output | InputError] = list(items)  # type: ignore[arg-type]
    for i, out in zip(good, outputs):
        result[i] = out
    return result


def _fail_first(items: Sequence[object], where: Any) -> None:
    for i, item in enumerate(items):
        if isinstance(item, InputError):
            raise RequestError(400, f"{where(i)}: {item}")


def invoke_json(translator: Translator, body: bytes) -> bytes:
    """``{"instances": [{"data": …, "configuration": {"attention_matrix": "true"}}]}`` ->
    ``{"predictions": [{"target": …, "matrix": …}]}``."""
    try:
        request = load_json(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RequestError(400, f"request body is not UTF-8: byte {e.start}") from None
    except InputError as e:
        raise RequestError(400, f"request body is {e}") from None
    if not isinstance(request, dict) or not isinstance(request.get("instances"), list):
        raise RequestError(400, 'expected a JSON object {"instances": [{"data": "…"}, …]}')
    items: list[Source | InputError] = []
    attention: list[bool] = []
    for instance in request["instances"]:
        wants = False
        try:
            if not isinstance(instance, dict) or "data" not in instance:
                raise InputError('expected an object with "data"')
            config = instance.get("configuration") or {}
            if not isinstance(config, dict):
                raise InputError('"configuration" must be an object')
            wants = _flag(config.get("attention_matrix", False))
            items.append(translator.source_from_text(instance["data"]))
        except InputError as e:
            items.append(e)
        attention.append(wants)
    if translator.config.on_error == "fail":
        _fail_first(items, lambda i: f"instances[{i}]")
    predictions = []
    for out in _translate_items(translator, items, attention):
        if isinstance(out, InputError):
            predictions.append({"error": str(out)})
            continue
        prediction: dict[str, Any] = {"target": out.target}
        if out.matrix is not None:
            prediction["matrix"] = out.matrix
            prediction["source_tokens"] = out.source_tokens
            prediction["target_tokens"] = out.target_tokens
        predictions.append(prediction)
    return json.dumps({"predictions": predictions}, ensure_ascii=False).encode("utf-8", "backslashreplace")


def parse_jsonline(line: bytes | str, translator: Translator) -> Source:
    """One ``{"source": "…"}`` line as a Source; raises InputError saying what is wrong with it."""
    try:
        text = line.decode("utf-8") if isinstance(line, bytes) else line
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 (byte {e.start})") from None
    if not text.strip():
        raise InputError('empty line (expected {"source": "…"})')
    obj = load_json(text)
    if not isinstance(obj, dict) or "source" not in obj:
        raise InputError('expected an object with "source"')
    return translator.source_from_text(obj["source"])


def translate_jsonlines(translator: Translator, lines: Sequence[bytes | str], first_line: int = 1,
                        name: str = "line", on_batch: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """One output object per input line, in order. ``first_line`` numbers the lines in messages (a
    batch transform passes its position in the file); with ``on_error=fail`` the first bad line raises
    RequestError(400) naming it, with ``record`` its output is ``{"error": …}``. `on_batch` counts
    lines as they are done (bad ones at once, good ones per decoded batch), for progress reports."""
    items: list[Source | InputError] = []
    for line in lines:
        try:
            items.append(parse_jsonline(line, translator))
        except InputError as e:
            items.append(e)
    if translator.config.on_error == "fail":
        _fail_first(items, lambda i: f"{name} {first_line + i}")
    return [{"error": str(o)} if isinstance(o, InputError) else {"target": o.target}
            for o in _translate_items(translator, items, [False] * len(items), on_batch)]


def split_lines(body: bytes) -> list[bytes]:
    """Lines of a JSON Lines body; a final newline does not make an extra (empty) line."""
    if not body:
        return []
    lines = body.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def invoke_jsonlines(translator: Translator, body: bytes) -> bytes:
    lines = split_lines(body)
    if not lines:
        raise RequestError(400, "empty request: expected one {\"source\": \"…\"} per line")
    return encode_jsonlines(translate_jsonlines(translator, lines))


def invoke_recordio(translator: Translator, body: bytes) -> bytes:
    """RecordIO-framed Records with ``features["source"]`` ids -> Records with ``features["target"]``
    ids. A bad record in ``record`` mode gets an empty target and ``{"error": …}`` in its metadata."""
    from model import record_pb2, recordio

    items: list[Source | InputError] = []
    try:
        for _, payload in recordio.iter_frames(io.BytesIO(body), "request body"):
            try:
                record = record_pb2.Record.FromString(payload)
            except Exception as e:  # protobuf's DecodeError
                items.append(InputError(f"not a protobuf Record: {e}"))
                continue
            if "source" not in record.features:
                items.append(InputError('no features["source"]'))
            elif record.features["source"].WhichOneof("value") != "int32_tensor":
                items.append(InputError(f'features["source"] is {record.features["source"].WhichOneof("value")}, '
                                        f"expected int32_tensor"))
            else:
                try:
                    items.append(translator.source_from_ids(list(record.features["source"].int32_tensor.values)))
                except InputError as e:
                    items.append(e)
    except recordio.RecordIOError as e:
        raise RequestError(400, str(e)) from None
    if not items:
        raise RequestError(400, "empty request: expected RecordIO-framed Records")
    if translator.config.on_error == "fail":
        _fail_first(items, lambda i: f"record {i + 1}")
    chunks = []
    for out in _translate_items(translator, items, [False] * len(items)):
        record = record_pb2.Record()
        target = record.features["target"].int32_tensor
        if isinstance(out, InputError):
            record.metadata = json.dumps({"error": str(out)})
        else:
            target.values.extend(out.target_ids)
            target.shape.append(len(out.target_ids))
        chunks.append(recordio.frame(record.SerializeToString()))
    return b"".join(chunks)


_HANDLERS = {JSON_CONTENT_TYPE: invoke_json, JSONLINES_CONTENT_TYPE: invoke_jsonlines,
             RECORDIO_CONTENT_TYPE: invoke_recordio}


def invoke(translator: Translator, body: bytes, content_type: str | None,
           accept: str | None = None) -> tuple[bytes, str]:
    """The ``POST /invocations`` contract on bytes: (response body, response content type)."""
    ctype = media_type(content_type)
    handler = _HANDLERS.get(ctype)
    if handler is None:
        raise RequestError(415, f"content type {content_type or '(none)'!r} is not supported: use "
                                f"{', '.join(CONTENT_TYPES)}")
    _accept(ctype, accept)
    return handler(translator, body), ctype
