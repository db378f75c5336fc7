"""The transform step: in-process streaming over JSON Lines, models as folders or model.tar.gz (local
or on moto's S3), bad lines in both modes, and the local emulation of a SageMaker transform job
against the real ``container/serve``.

The copy-task model (tests/models.py) echoes its input, so "output line i equals input line i" checks
order and completeness at once; a shuffled or dropped line could not pass.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from model.archive import extract_model_archive
from pipeline_tasks import cli, storage
from pipeline_tasks.jobs.local.transform import TransformJobError, mini_batches, run_transform_job
from pipeline_tasks.jobs.requests import transform_job_config
from pipeline_tasks.transform import (
    LineProgress,
    TransformConfig,
    resolve_model,
    transform,
)
from tests.system.copy_task import SYMBOLS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GREEDY = TransformConfig(beam_size=1, batch_size=64)


def copy_lines(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(SYMBOLS, int(rng.integers(3, 11)))) for _ in range(n)]


def write_jsonl(path: Path, sources: list[str], extra: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"source": s, **(extra or {})}) + "\n" for s in sources), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def model_archive(model_dir: Path, path: Path) -> Path:
    """model.tar.gz as SageMaker makes it: the model directory's files at the archive's root."""
    with tarfile.open(path, "w:gz") as tar:
        for f in sorted(model_dir.iterdir()):
            tar.add(f, arcname=f.name)
    return path


# --- in-process ------------------------------------------------------------------------------------

def test_10000_lines_come_back_in_order(copy_model: Path, tmp_path: Path) -> None:
    sources = copy_lines(10_000)
    src = write_jsonl(tmp_path / "in.jsonl", sources)
    report = transform(copy_model, str(src), str(tmp_path / "out.jsonl"), GREEDY)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert report["lines"] == len(out) == 10_000 and report["errors"] == 0
    assert all(set(o) == {"target"} for o in out)
    same = sum(o["target"] == s for o, s in zip(out, sources))
    assert same >= 9_900, f"only {same} of 10000 lines echo their own input"
    assert report["text_format"] == "raw" and report["beam_size"] == 1


def test_beam_search_and_chunks_do_not_change_the_output(copy_model: Path, tmp_path: Path) -> None:
    sources = copy_lines(300, seed=3)
    src = write_jsonl(tmp_path / "in.jsonl", sources)
    transform(copy_model, str(src), str(tmp_path / "a.jsonl"), TransformConfig(beam_size=3, chunk_lines=7))
    transform(copy_model, str(src), str(tmp_path / "b.jsonl"), TransformConfig(beam_size=3, chunk_lines=5000))
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


BAD = {
    2: b'{"source": "a b"',             # invalid JSON
    4: b'{"text": "a b c"}',            # no "source"
    5: b'{"source": ""}',               # empty string
    7: b"",                             # blank line
    8: b'{"source": 17}',               # not a string
    9: b'\xff\xfe{"source": "a"}',      # not UTF-8
}


def mixed_input(path: Path) -> tuple[Path, list[str]]:
    sources = copy_lines(10, seed=5)
    lines = [BAD.get(i, json.dumps({"source": s}).encode()) for i, s in enumerate(sources, 1)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, sources


def test_a_bad_line_fails_the_job_naming_it_and_writes_nothing(copy_model: Path, tmp_path: Path) -> None:
    src, _ = mixed_input(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    out.write_text("previous output\n")
    with pytest.raises(ValueError, match=r"in\.jsonl: line 2: not valid JSON"):
        transform(copy_model, str(src), str(out), GREEDY)
    assert out.read_text() == "previous output\n"
    assert [p.name for p in tmp_path.iterdir()] != [] and not list(tmp_path.glob(".out.jsonl.*"))


def test_record_mode_keeps_every_line_and_counts_the_bad_ones(copy_model: Path, tmp_path: Path) -> None:
    src, sources = mixed_input(tmp_path / "in.jsonl")
    report = transform(copy_model, str(src), str(tmp_path / "out.jsonl"),
                       TransformConfig(beam_size=1, on_error="record", chunk_lines=3))
    out = read_jsonl(tmp_path / "out.jsonl")
    assert len(out) == 10 and report["errors"] == len(BAD) and report["error_lines"] == sorted(BAD)
    for i, o in enumerate(out, 1):
        if i in BAD:
            assert set(o) == {"error"} and o["error"], (i, o)
        else:
            assert o == {"target": sources[i - 1]}
    assert "source" in out[3]["error"] and "empty" in out[4]["error"] and "UTF-8" in out[8]["error"]


def test_unknown_tokens_map_to_unk_or_are_rejected(copy_model: Path, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ["a b zz c"])
    transform(copy_model, str(src), str(tmp_path / "out.jsonl"), GREEDY)
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 1
    with pytest.raises(ValueError, match=r"line 1: 1 token\(s\) not in the source vocabulary: 'zz'"):
        transform(copy_model, str(src), str(tmp_path / "out2.jsonl"),
                  TransformConfig(beam_size=1, unknown_tokens="reject"))


def test_raw_text_is_tokenized_and_detokenized_with_the_models_tokenizer(wmt_model: Path, tmp_path: Path) -> None:
    from model.inference_config import InferenceConfig
    from model.translator import Translator

    sources = ["The Commission has adopted the proposal.", "It is not acceptable that Parliament is ignored."]
    src = write_jsonl(tmp_path / "in.jsonl", sources)
    transform(wmt_model, str(src), str(tmp_path / "out.jsonl"), TransformConfig(beam_size=2))
    out = [o["target"] for o in read_jsonl(tmp_path / "out.jsonl")]
    translator = Translator.load(wmt_model, InferenceConfig(beam_size=2))
    assert translator.text_format == "raw"
    assert out == translator.translate_texts(sources)
    assert all("▁" not in t for t in out)  # SentencePiece pieces were joined back into words


# The client's mistakes that used to escape as exceptions: a lone surrogate (SentencePiece raised on it) and
# JSON nested too deeply to decode (RecursionError), each a bad line like any other.
UNDECODABLE = {
    2: b'{"source": "Thank \\ud800 you ."}',
    4: b'{"source": "Thank you ."}'.replace(b'"Thank you ."', b"[" * 100_000 + b"]" * 100_000),
}


def test_lone_surrogate_and_deep_nesting_are_bad_lines_in_both_modes(wmt_model: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    from model.inference_config import InferenceConfig
    from model.translator import Translator

    sources = ["Thank you .", "-", "The Commission has adopted the proposal .", "-", "Good morning ."]
    lines = [UNDECODABLE.get(i, json.dumps({"source": s}).encode()) for i, s in enumerate(sources, 1)]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ValueError, match=r"in\.jsonl: line 2: not valid Unicode: a lone surrogate U\+D800"):
        transform(wmt_model, str(src), str(tmp_path / "out.jsonl"), TransformConfig(beam_size=1))
    assert not (tmp_path / "out.jsonl").exists()
    rc = cli.main(["-q", "transform", "--model", str(wmt_model), "--input", str(src), "--output",
                   str(tmp_path / "out.jsonl"), "--beam-size", "1", "--on-error", "record"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["errors"] == 2 and report["error_lines"] == [2, 4]
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [set(o) for o in out] == [{"target"}, {"error"}, {"target"}, {"error"}, {"target"}]
    assert "U+D800" in out[1]["error"] and "nested too deeply" in out[3]["error"]
    expected = Translator.load(wmt_model, InferenceConfig(beam_size=1)).translate_texts([sources[i] for i in (0, 2, 4)])
    assert [out[i]["target"] for i in (0, 2, 4)] == expected


# --- progress -------------------------------------------------------------------------------------------------

def progress_lines(caplog: pytest.LogCaptureFixture, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


def test_progress_is_logged_even_while_nothing_finishes(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline_tasks.transform"):
        with LineProgress("transform job x", total=2737, interval_s=0.05) as progress:
            progress.started("b1", "mini-batch of lines 1-2,737")
            time.sleep(0.4)
            progress.add(2737)
            progress.finished("b1")
            time.sleep(0.12)
        progress.done()
    beats = progress_lines(caplog, "transform job x: ")
    waiting = [m for m in beats if m.startswith("transform job x: 0 / 2,737 lines (0.0%)")]
    assert len(waiting) >= 3, beats
    assert all("0.0 lines/s over the last" in m and "ETA unknown" in m and
               "running: mini-batch of lines 1-2,737 for" in m for m in waiting), waiting
    assert any(m.startswith("transform job x: 2,737 / 2,737 lines (100.0%), ") and "ETA 0s" in m
               and "running" not in m for m in beats), beats
    assert beats[-1].startswith("transform job x: 2,737 lines in ")


def test_transform_logs_progress_inside_a_long_chunk(copy_model: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", copy_lines(3000, seed=11))
    with caplog.at_level(logging.INFO, logger="pipeline_tasks.transform"):
        transform(copy_model, str(src), str(tmp_path / "out.jsonl"), TransformConfig(beam_size=3, chunk_lines=5000),
                  progress_interval_s=0.1)
    lines = progress_lines(caplog, "transform in.jsonl: ")
    beats, final = lines[:-1], lines[-1]
    counts = [int(re.search(r": ([\d,]+) / 3,000 lines", m).group(1).replace(",", "")) for m in beats]
    # one chunk of 3,000 lines, and still its lines are counted as its batches are decoded
    assert len(beats) >= 3 and counts == sorted(counts) and any(0 < c < 3000 for c in counts), beats
    assert all("lines/s over the last" in m and "ETA" in m for m in beats)
    assert any("running: lines 1-3,000 for " in m for m in beats)
    assert final.startswith("transform in.jsonl: 3,000 lines in ")


def test_local_transform_job_logs_progress_per_mini_batch(copy_model: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    write_jsonl(tmp_path / "in" / "data.jsonl", copy_lines(1200, seed=12))
    config = one_thread(_job(tmp_path, str(copy_model), str(tmp_path / "in"), str(tmp_path / "out"),
                             cfg=TransformConfig(beam_size=3), max_payload_mb=1))
    with caplog.at_level(logging.INFO, logger="pipeline_tasks.transform"):
        result = run_transform_job(config, mini_batch_lines=300, progress_interval_s=0.05)
    assert result["TransformJobStatus"] == "Completed" and result["Lines"] == 1200, result.get("FailureReason")
    lines = progress_lines(caplog, f"transform job {tmp_path / 'in' / 'data.jsonl'}: ")
    beats = lines[:-1]
    counts = [int(re.search(r": ([\d,]+) / 1,200 lines", m).group(1).replace(",", "")) for m in beats]
    assert counts == sorted(counts) and set(counts) <= {0, 300, 600, 900, 1200} and len(set(counts)) >= 2, beats
    assert any("running: mini-batch of lines 1-300 for " in m for m in beats), beats
    assert lines[-1].startswith(f"transform job {tmp_path / 'in' / 'data.jsonl'}: 1,200 lines in ")
    assert len(read_jsonl(tmp_path / "out" / "data.jsonl.out")) == 1200


# --- models: folders and archives -------------------------------------------------------------------------

def test_model_tar_gz_gives_the_same_output_as_the_folder(copy_model: Path, tmp_path: Path) -> None:
    archive = model_archive(copy_model, tmp_path / "model.tar.gz")
    src = write_jsonl(tmp_path / "in.jsonl", copy_lines(50))
    transform(copy_model, str(src), str(tmp_path / "a.jsonl"), GREEDY)
    transform(str(archive), str(src), str(tmp_path / "b.jsonl"), GREEDY)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def _tar_with(path: Path, members: list[tarfile.TarInfo], data: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            if m.isfile():
                m.size = len(data)
                tar.addfile(m, io.BytesIO(data))
            else:
                tar.addfile(m)
    return path


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil-abs.txt", "model/../../evil.txt"])
def test_archive_members_outside_the_target_are_refused(tmp_path: Path, member: str) -> None:
    archive = _tar_with(tmp_path / "bad.tar.gz", [tarfile.TarInfo("params.pt"), tarfile.TarInfo(member)])
    target = tmp_path / "deep" / "target"
    with pytest.raises(ValueError, match="outside"):
        extract_model_archive(archive, target)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()
    assert not any(target.iterdir())


def test_archive_links_outside_and_devices_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("vocab.src.json")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
    with pytest.raises(ValueError, match="links outside"):
        extract_model_archive(_tar_with(tmp_path / "l.tar.gz", [tarfile.TarInfo("params.pt"), link]), tmp_path / "t1")
    dev = tarfile.TarInfo("dev")
    dev.type = tarfile.CHRTYPE
    with pytest.raises(ValueError, match="not a regular file"):
        extract_model_archive(_tar_with(tmp_path / "d.tar.gz", [tarfile.TarInfo("params.pt"), dev]), tmp_path / "t2")


def test_an_archive_without_a_model_or_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"one params\.pt"):
        extract_model_archive(_tar_with(tmp_path / "e.tar.gz", [tarfile.TarInfo("readme.txt")]), tmp_path / "t")
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="not a readable tar archive"):
        extract_model_archive(tmp_path / "junk.tar.gz", tmp_path / "t3")
    with pytest.raises(FileNotFoundError, match="model not found"):
        resolve_model(tmp_path / "nothing-here", tmp_path / "w")
    with pytest.raises(FileNotFoundError, match=r"no params\.pt"):
        resolve_model(tmp_path, tmp_path / "w")


# --- S3 ------------------------------------------------------------------------------------------------------

def test_s3_model_input_and_output_on_moto(copy_model: Path, tmp_path: Path, s3, bucket: str) -> None:
    archive = model_archive(copy_model, tmp_path / "model.tar.gz")
    s3.upload_file(str(archive), bucket, "job/output/model.tar.gz")
    sources = copy_lines(200, seed=7)
    s3.upload_file(str(write_jsonl(tmp_path / "in.jsonl", sources)), bucket, "batch/in.jsonl")
    report = transform(f"s3://{bucket}/job/output/model.tar.gz", f"s3://{bucket}/batch/in.jsonl",
                       f"s3://{bucket}/results/in.jsonl.out", GREEDY)
    assert report["lines"] == 200
    body = s3.get_object(Bucket=bucket, Key="results/in.jsonl.out")["Body"].read().decode()
    transform(copy_model, str(tmp_path / "in.jsonl"), str(tmp_path / "local.out"), GREEDY)
    assert body == (tmp_path / "local.out").read_text()


def test_a_failed_s3_transform_publishes_nothing(copy_model: Path, tmp_path: Path, s3, bucket: str) -> None:
    src, _ = mixed_input(tmp_path / "in.jsonl")
    s3.upload_file(str(src), bucket, "in.jsonl")
    with pytest.raises(ValueError, match="line 2"):
        transform(copy_model, f"s3://{bucket}/in.jsonl", f"s3://{bucket}/out/in.jsonl.out", GREEDY)
    assert storage.list_files(f"s3://{bucket}/out") == {}


# --- the CLI -------------------------------------------------------------------------------------------------

def test_cli_transform(copy_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, _ = mixed_input(tmp_path / "in.jsonl")
    rc = cli.main(["-q", "transform", "--model", str(copy_model), "--input", str(src), "--output",
                   str(tmp_path / "out.jsonl"), "--beam-size", "1", "--on-error", "record"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == len(BAD) and len(read_jsonl(tmp_path / "out.jsonl")) == 10
    rc = cli.main(["-q", "transform", "--model", str(copy_model), "--input", str(src), "--output",
                   str(tmp_path / "out2.jsonl")])
    assert rc == 1 and "line 2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "out2.jsonl").exists()


# --- the SageMaker transform job: request and local emulation ------------------------------------------------

def test_transform_job_config_is_the_create_model_and_create_transform_job_request() -> None:
    config = transform_job_config(
        job_name="wmt-transform-1", model_name="wmt-model-1", image_uri="123.dkr.ecr.us-east-1.amazonaws.com/s2s:1",
        model_data_url="s3://b/train/out/model.tar.gz", role_arn="arn:aws:iam::123:role/sm",
        input_uri="s3://b/batch/", output_uri="s3://b/batch-out/", instance_type="ml.g5.xlarge",
        cfg=TransformConfig(beam_size=5, batch_size=16, on_error="record"), max_payload_mb=2,
        max_concurrent_transforms=4, tags={"run": "r1"})
    env = {"SEQ2SEQ_BATCH_SIZE": "16", "SEQ2SEQ_BEAM_SIZE": "5", "SEQ2SEQ_UNKNOWN_TOKENS": "unk",
           "SEQ2SEQ_ON_ERROR": "record"}
    assert config == {
        "Model": {
            "ModelName": "wmt-model-1", "ExecutionRoleArn": "arn:aws:iam::123:role/sm",
            "PrimaryContainer": {"Image": "123.dkr.ecr.us-east-1.amazonaws.com/s2s:1",
                                 "ModelDataUrl": "s3://b/train/out/model.tar.gz", "Environment": env},
            "Tags": [{"Key": "run", "Value": "r1"}],
        },
        "Transform": {
            "TransformJobName": "wmt-transform-1", "ModelName": "wmt-model-1", "BatchStrategy": "MultiRecord",
            "MaxPayloadInMB": 2, "MaxConcurrentTransforms": 4,
            "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/batch/"}},
                               "ContentType": "application/jsonlines", "SplitType": "Line", "CompressionType": "None"},
            "TransformOutput": {"S3OutputPath": "s3://b/batch-out/", "Accept": "application/jsonlines",
                                "AssembleWith": "Line"},
            "TransformResources": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1},
            "Tags": [{"Key": "run", "Value": "r1"}],
        },
    }
    with pytest.raises(ValueError, match="max_payload_mb"):
        transform_job_config(job_name="j", model_name="m", image_uri="i", model_data_url="s3://b/m.tar.gz",
                             role_arn="r", input_uri="s3://b/i", output_uri="s3://b/o", max_payload_mb=0)


def test_mini_batches_stay_under_the_payload_limit_and_number_lines() -> None:
    lines = [b"x" * n for n in (3, 3, 3, 9, 1, 1)]
    batches = list(mini_batches(iter([lines[:2], lines[2:]]), 10, "in"))
    assert batches == [(1, lines[0:2]), (3, lines[2:3]), (4, lines[3:4]), (5, lines[4:6])]
    assert all(sum(len(x) + 1 for x in b) <= 10 for _, b in batches)
    with pytest.raises(TransformJobError, match="in: line 2 is 12 bytes, over MaxPayloadInMB"):
        list(mini_batches(iter([[b"a", b"b" * 11]]), 10, "in"))


def _job(tmp_path: Path, model_url: str, input_uri: str, output_uri: str, **kwargs) -> dict:
    return transform_job_config(job_name="local-1", model_name="m", image_uri="local", model_data_url=model_url,
                                role_arn="arn:aws:iam::123:role/x", input_uri=input_uri, output_uri=output_uri,
                                **kwargs)


def one_thread(config: dict) -> dict:
    """The server decodes on one torch thread: the tiny model is faster so, above all on a shared machine."""
    config["Model"]["PrimaryContainer"]["Environment"]["SEQ2SEQ_TORCH_THREADS"] = "1"
    return config


def test_local_transform_job_matches_the_in_process_transform(copy_model: Path, tmp_path: Path, s3,
                                                              bucket: str) -> None:
    """Two input objects under a prefix on S3, 1 MB payloads (so several mini-batches each, as padded lines
    are ~1 KB), posted to the real container/serve: `<name>.out` per object, identical to the in-process
    transform of the same lines."""
    archive = model_archive(copy_model, tmp_path / "model.tar.gz")
    s3.upload_file(str(archive), bucket, "model/model.tar.gz")
    pad = {"id": "x" * 1000}
    for name, seed in (("part-a.jsonl", 1), ("sub/part-b.jsonl", 2)):
        s3.upload_file(str(write_jsonl(tmp_path / "in" / name, copy_lines(1500, seed), pad)), bucket, f"in/{name}")
    config = _job(tmp_path, f"s3://{bucket}/model/model.tar.gz", f"s3://{bucket}/in", f"s3://{bucket}/out",
                  cfg=TransformConfig(beam_size=1, batch_size=64), max_payload_mb=1, max_concurrent_transforms=2)
    result = run_transform_job(config)
    assert result["TransformJobStatus"] == "Completed", result.get("FailureReason")
    assert result["Lines"] == 3000 and result["ErrorLines"] == 0
    assert sorted(storage.list_files(f"s3://{bucket}/out")) == ["part-a.jsonl.out", "sub/part-b.jsonl.out"]
    for name in ("part-a.jsonl", "sub/part-b.jsonl"):
        transform(copy_model, str(tmp_path / "in" / name), str(tmp_path / "expected.out"), GREEDY)
        got = s3.get_object(Bucket=bucket, Key=f"out/{name}.out")["Body"].read().decode()
        assert got == (tmp_path / "expected.out").read_text(), name


def test_local_transform_job_bad_lines_in_both_modes(copy_model: Path, tmp_path: Path) -> None:
    """A bad line far into the file (in the third mini-batch) fails the job with its line number in the
    input object; with on_error=record every line comes back and the bad one carries the error."""
    sources = copy_lines(3000, seed=9)
    lines = [json.dumps({"source": s, "id": "x" * 1000}) for s in sources]
    lines[2499] = '{"id": "no source here"}'
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.jsonl").write_text("\n".join(lines) + "\n")
    failed = run_transform_job(_job(tmp_path, str(copy_model), str(tmp_path / "in"), str(tmp_path / "out"),
                                    cfg=TransformConfig(beam_size=1), max_payload_mb=1))
    assert failed["TransformJobStatus"] == "Failed"
    assert "data.jsonl: line 2500: " in failed["FailureReason"] and '"source"' in failed["FailureReason"]
    assert not (tmp_path / "out" / "data.jsonl.out").exists()
    done = run_transform_job(_job(tmp_path, str(copy_model), str(tmp_path / "in"), str(tmp_path / "out"),
                                  cfg=TransformConfig(beam_size=1, on_error="record"), max_payload_mb=1))
    assert done["TransformJobStatus"] == "Completed" and done["ErrorLines"] == 1
    out = read_jsonl(tmp_path / "out" / "data.jsonl.out")
    assert len(out) == 3000 and set(out[2499]) == {"error"}
    assert sum(o.get("target") == s for o, s in zip(out, sources)) >= 2970


def test_local_transform_job_lone_surrogate_and_deep_nesting_name_their_line(copy_model: Path,
                                                                            tmp_path: Path) -> None:
    """Through the server: a 400 naming the line of the input object (not a 500 for the whole mini-batch),
    or, with on_error=record, an {"error": …} in that line's place."""
    sources = copy_lines(800, seed=13)
    lines = [json.dumps({"source": s}) for s in sources]
    lines[299] = '{"source": "a \\udfff b"}'
    lines[649] = '{"source": ' + "[" * 100_000 + "]" * 100_000 + "}"  # in the second mini-batch
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.jsonl").write_text("\n".join(lines) + "\n")
    failed = run_transform_job(one_thread(_job(tmp_path, str(copy_model), str(tmp_path / "in"), str(tmp_path / "out"),
                                               cfg=TransformConfig(beam_size=1), max_payload_mb=1)))
    assert failed["TransformJobStatus"] == "Failed"
    assert "data.jsonl: line 300: not valid Unicode: a lone surrogate U+DFFF" in failed["FailureReason"], failed
    done = run_transform_job(one_thread(_job(tmp_path, str(copy_model), str(tmp_path / "in"), str(tmp_path / "out"),
                                             cfg=TransformConfig(beam_size=1, on_error="record"), max_payload_mb=1)))
    assert done["TransformJobStatus"] == "Completed" and done["ErrorLines"] == 2, done.get("FailureReason")
    out = read_jsonl(tmp_path / "out" / "data.jsonl.out")
    assert len(out) == 800 and "U+DFFF" in out[299]["error"] and "nested too deeply" in out[649]["error"]
    assert sum(o.get("target") == s for o, s in zip(out, sources)) >= 790


def test_local_transform_job_refuses_what_it_does_not_emulate(copy_model: Path, tmp_path: Path) -> None:
    config = _job(tmp_path, str(copy_model), str(tmp_path), str(tmp_path / "out"))
    config["Transform"]["TransformInput"]["SplitType"] = "None"
    with pytest.raises(ValueError, match="SplitType='None'"):
        run_transform_job(config)
    config = _job(tmp_path, str(tmp_path / "missing.tar.gz"), str(tmp_path), str(tmp_path / "out"))
    result = run_transform_job(config)
    assert result["TransformJobStatus"] == "Failed" and "model not found" in result["FailureReason"]


def test_docker_serve_command_is_what_sagemaker_runs(tmp_path: Path) -> None:
    from pipeline_tasks.jobs.local.docker import docker_serve_command

    cmd = docker_serve_command("acct.dkr.ecr/s2s:1", tmp_path, 18080, {"SEQ2SEQ_BEAM_SIZE": "5", "A": "1"},
                               gpus=True, name="seq2seq-serve-18080")
    assert cmd == ["docker", "run", "--rm", "--name", "seq2seq-serve-18080", "-p", "127.0.0.1:18080:8080",
                   "-v", f"{tmp_path.resolve()}:/opt/ml/model:ro", "--gpus", "all", "-e", "A=1",
                   "-e", "SEQ2SEQ_BEAM_SIZE=5", "acct.dkr.ecr/s2s:1", "serve"]
    assert "--gpus" not in docker_serve_command("img", tmp_path, 1, {}, gpus=False, name="n")


def test_docker_transform_job_without_an_engine_is_a_clear_error(copy_model: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline_tasks.jobs.local.docker import DockerUnavailableError

    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no `docker` command at all
    write_jsonl(tmp_path / "in" / "a.jsonl", copy_lines(3))
    config = _job(tmp_path, str(copy_model), str(tmp_path / "in"), str(tmp_path / "out"))
    with pytest.raises(DockerUnavailableError, match=r"no Docker engine answers .*use backend=local"):
        run_transform_job(config, backend="docker")
    with pytest.raises(ValueError, match="backend must be local or docker"):
        run_transform_job(config, backend="sagemaker")
    assert not (tmp_path / "out").exists()
