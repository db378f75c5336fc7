"""The upload step over real HTTP against moto's S3 server, and to local folders.

A module-scoped moto server (ThreadedMotoServer on a free port) stands in for S3; boto3 reaches it
only through AWS_ENDPOINT_URL, with fake credentials and no AWS config files. The channels are made
once per module by the project's own converter from the first lines of the bundled sample corpus.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError

from pipeline_tasks import storage
from pipeline_tasks.channels import make_channels
from pipeline_tasks.upload import upload_channels
from tests.conftest import ROOT, SAMPLE, head_lines

# local relative path -> channel it belongs to, as the recordio step lays them out
LAYOUT = {
    "train/train.rec": "train",
    "validation/val.rec": "validation",
    "vocab/vocab.src.json": "vocab",
    "vocab/vocab.trg.json": "vocab",
}
# S3 operations that write object bytes
WRITE_OPS = {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "CopyObject"}


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture
def write_ops(s3) -> Iterator[Counter]:
    """Counts the S3 write operations the (shared, cached) client sends."""
    calls: Counter = Counter()

    def count(model, **_kwargs):
        if model.name in WRITE_OPS:
            calls[model.name] += 1

    s3.meta.events.register("before-call.s3", count)
    yield calls
    s3.meta.events.unregister("before-call.s3", count)


@pytest.fixture(scope="module")
def channels_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real channels from 300 training and 100 validation pairs of the bundled sample (made once)."""
    base = tmp_path_factory.mktemp("channels")
    corpus = {f"{split}.{lang}": str(head_lines(SAMPLE / f"{split}.{lang}", base / "corpus" / f"{split}.{lang}", n))
              for split, n in (("train", 300), ("val", 100)) for lang in ("en", "de")}
    out = base / "channels"
    make_channels(corpus["train.en"], corpus["train.de"], corpus["val.en"], corpus["val.de"], out, workers=1)
    for rel in LAYOUT:
        assert (out / rel).stat().st_size > 0, rel
    return out


@pytest.fixture
def channels_copy(channels_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the channels that a test may change."""
    return Path(shutil.copytree(channels_dir, tmp_path / "channels"))


# --- helpers -------------------------------------------------------------------------------------

def keys_under(s3, bucket: str, prefix: str = "") -> dict[str, dict]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = obj
    return out


def get_bytes(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_uploaded(s3, bucket: str, prefix: str, channels: Path) -> dict[str, dict]:
    """Exactly the four channel objects under `prefix`, byte-identical, sha256 in their metadata."""
    want = {f"{prefix}/{rel}" if prefix else rel: channels / rel for rel in LAYOUT}
    objects = keys_under(s3, bucket, prefix)
    assert sorted(objects) == sorted(want)
    heads = {}
    for key, local in want.items():
        data = local.read_bytes()
        assert objects[key]["Size"] == len(data), key
        assert get_bytes(s3, bucket, key) == data, key
        heads[key] = s3.head_object(Bucket=bucket, Key=key)
        assert heads[key]["ContentLength"] == len(data)
        assert heads[key]["Metadata"] == {storage.SHA256_METADATA: hashlib.sha256(data).hexdigest()}, key
    return heads


# --- S3 ------------------------------------------------------------------------------------------

def test_upload_to_s3_layout_bytes_and_metadata(s3, bucket: str, channels_dir: Path, write_ops: Counter) -> None:
    result = upload_channels(channels_dir, f"s3://{bucket}/prefix")

    assert result["uploaded"] == 4
    assert result["skipped"] == 0
    assert result["extra"] == [] and result["deleted"] == []
    assert result["channels"] == {
        "train": f"s3://{bucket}/prefix/train/",
        "validation": f"s3://{bucket}/prefix/validation/",
        "vocab": f"s3://{bucket}/prefix/vocab/",
    }
    assert all(uri.endswith("/") for uri in result["channels"].values())
    # each channel's identity: sha256 over its files' names and sha256s, from the bytes themselves
    for ch in ("train", "validation", "vocab"):
        lines = "".join(f"{p.relative_to(channels_dir / ch).as_posix()}\0{sha256(p)}\n"
                        for p in sorted(q for q in (channels_dir / ch).rglob("*") if q.is_file()))
        assert result["sha256"][ch] == hashlib.sha256(lines.encode()).hexdigest(), ch
    assert_uploaded(s3, bucket, "prefix", channels_dir)
    # small files: one PutObject each, no multipart
    assert write_ops == Counter({"PutObject": 4})
    # the result is what the CLI prints: it must be JSON-serialisable
    json.dumps(result)


def test_upload_to_bucket_root(s3, bucket: str, channels_dir: Path) -> None:
    result = upload_channels(channels_dir, f"s3://{bucket}")
    assert result["uploaded"] == 4
    assert result["channels"]["train"] == f"s3://{bucket}/train/"
    assert_uploaded(s3, bucket, "", channels_dir)


def test_rerun_skips_everything_and_writes_nothing(s3, bucket: str, channels_dir: Path, write_ops: Counter) -> None:
    dest = f"s3://{bucket}/prefix"
    upload_channels(channels_dir, dest)
    before = assert_uploaded(s3, bucket, "prefix", channels_dir)
    write_ops.clear()

    result = upload_channels(channels_dir, dest)

    assert (result["uploaded"], result["skipped"]) == (0, 4)
    assert result["extra"] == [] and result["deleted"] == []
    assert sum(write_ops.values()) == 0, write_ops
    after = assert_uploaded(s3, bucket, "prefix", channels_dir)
    for key, head in before.items():
        assert after[key]["ETag"] == head["ETag"], key
        assert after[key]["LastModified"] == head["LastModified"], key


def test_changed_file_is_the_only_one_reuploaded(s3, bucket: str, channels_copy: Path, write_ops: Counter) -> None:
    dest = f"s3://{bucket}/prefix"
    upload_channels(channels_copy, dest)
    old_train = s3.head_object(Bucket=bucket, Key="prefix/train/train.rec")
    train = channels_copy / "train" / "train.rec"
    with open(train, "ab") as f:
        f.write(b"\x00" * 12)   # same size class, different bytes
    write_ops.clear()

    result = upload_channels(channels_copy, dest)

    assert (result["uploaded"], result["skipped"]) == (1, 3)
    assert write_ops == Counter({"PutObject": 1})
    heads = assert_uploaded(s3, bucket, "prefix", channels_copy)
    new_train = heads["prefix/train/train.rec"]
    assert new_train["ContentLength"] == old_train["ContentLength"] + 12
    assert new_train["Metadata"][storage.SHA256_METADATA] == sha256(train)
    assert new_train["ETag"] != old_train["ETag"]


def test_same_size_different_bytes_is_reuploaded(s3, bucket: str, channels_copy: Path) -> None:
    """The skip is decided by sha256, not by size alone."""
    dest = f"s3://{bucket}/prefix"
    upload_channels(channels_copy, dest)
    val = channels_copy / "validation" / "val.rec"
    data = bytearray(val.read_bytes())
    data[-1] ^= 0xFF
    val.write_bytes(bytes(data))

    result = upload_channels(channels_copy, dest)

    assert (result["uploaded"], result["skipped"]) == (1, 3)
    assert get_bytes(s3, bucket, "prefix/validation/val.rec") == bytes(data)


def test_object_without_sha256_metadata_is_reuploaded(s3, bucket: str, channels_dir: Path) -> None:
    """Same bytes put by another tool (no sha256 metadata) cannot be proven identical: upload again."""
    train = channels_dir / "train" / "train.rec"
    s3.put_object(Bucket=bucket, Key="prefix/train/train.rec", Body=train.read_bytes())

    result = upload_channels(channels_dir, f"s3://{bucket}/prefix")

    assert (result["uploaded"], result["skipped"]) == (4, 0)
    assert_uploaded(s3, bucket, "prefix", channels_dir)


def test_multipart_upload(s3, bucket: str, channels_copy: Path, monkeypatch: pytest.MonkeyPatch,
                          write_ops: Counter) -> None:
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 << 20)
    monkeypatch.setattr(storage, "MULTIPART_CHUNK", 5 << 20)
    train = channels_copy / "train" / "train.rec"
    records = train.read_bytes()   # whole RecordIO records: concatenations are valid RecordIO too
    big = records * ((11 << 20) // len(records) + 1)
    train.write_bytes(big)
    assert len(big) > 10 << 20
    parts = -(-len(big) // (5 << 20))
    assert parts == 3

    result = upload_channels(channels_copy, f"s3://{bucket}/prefix")

    assert result["uploaded"] == 4
    heads = assert_uploaded(s3, bucket, "prefix", channels_copy)
    etag = heads["prefix/train/train.rec"]["ETag"].strip('"')
    assert etag.endswith(f"-{parts}"), etag
    # the small files stay single PUTs
    assert heads["prefix/vocab/vocab.src.json"]["ETag"].strip('"').count("-") == 0
    assert write_ops["CreateMultipartUpload"] == 1
    assert write_ops["UploadPart"] == parts
    assert write_ops["CompleteMultipartUpload"] == 1
    assert write_ops["PutObject"] == 3

    # a re-run recognises the multipart object by its sha256 metadata
    write_ops.clear()
    again = upload_channels(channels_copy, f"s3://{bucket}/prefix")
    assert (again["uploaded"], again["skipped"]) == (0, 4)
    assert sum(write_ops.values()) == 0

    # and storage.get_file brings it back whole (ranged multipart download)
    back = storage.get_file(f"s3://{bucket}/prefix/train/train.rec", channels_copy.parent / "back" / "train.rec")
    assert back.read_bytes() == big


def test_extra_object_is_reported_then_deleted(s3, bucket: str, channels_dir: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    dest = f"s3://{bucket}/prefix"
    upload_channels(channels_dir, dest)
    s3.put_object(Bucket=bucket, Key="prefix/train/old-shard.rec", Body=b"stale")
    s3.put_object(Bucket=bucket, Key="prefix/vocab/sub/x.json", Body=b"{}")
    # outside the channel prefixes: none of this upload's business
    s3.put_object(Bucket=bucket, Key="prefix/training-notes.txt", Body=b"keep")
    s3.put_object(Bucket=bucket, Key="prefix/trainer/model.tar.gz", Body=b"keep")

    with caplog.at_level(logging.WARNING, logger="pipeline_tasks.upload"):
        result = upload_channels(channels_dir, dest)

    stale, nested = f"s3://{bucket}/prefix/train/old-shard.rec", f"s3://{bucket}/prefix/vocab/sub/x.json"
    assert result["extra"] == [stale, nested]
    assert result["deleted"] == []
    assert (result["uploaded"], result["skipped"]) == (0, 4)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "pipeline_tasks.upload"]
    assert len(warnings) == 2
    assert stale in warnings[0].getMessage() and "train" in warnings[0].getMessage()
    assert nested in warnings[1].getMessage()
    assert "prefix/train/old-shard.rec" in keys_under(s3, bucket)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline_tasks.upload"):
        result = upload_channels(channels_dir, dest, delete_extra=True)

    assert result["deleted"] == [stale, nested]
    assert result["extra"] == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sorted(keys_under(s3, bucket)) == sorted(
        [f"prefix/{rel}" for rel in LAYOUT] + ["prefix/training-notes.txt", "prefix/trainer/model.tar.gz"])
    for rel in LAYOUT:
        assert get_bytes(s3, bucket, f"prefix/{rel}") == (channels_dir / rel).read_bytes()


def test_delete_extra_with_odd_key_characters(s3, bucket: str, channels_dir: Path) -> None:
    """Keys holding '#', '?', '%' or spaces are legal in S3: they must be reported and deleted as they are."""
    dest = f"s3://{bucket}/prefix"
    upload_channels(channels_dir, dest)
    odd = ["prefix/train/notes#1.txt", "prefix/train/what?.rec", "prefix/train/a b%20c.rec"]
    for key in odd:
        s3.put_object(Bucket=bucket, Key=key, Body=b"stale")

    result = upload_channels(channels_dir, dest, delete_extra=True)

    assert sorted(result["deleted"]) == sorted(f"s3://{bucket}/{key}" for key in odd)
    assert sorted(keys_under(s3, bucket)) == sorted(f"prefix/{rel}" for rel in LAYOUT)


@pytest.mark.parametrize("channel", ["train", "validation", "vocab"])
@pytest.mark.parametrize("how", ["missing", "empty"])
def test_missing_or_empty_channel_uploads_nothing(s3, bucket: str, channels_copy: Path, channel: str,
                                                  how: str, write_ops: Counter) -> None:
    shutil.rmtree(channels_copy / channel)
    if how == "empty":
        (channels_copy / channel).mkdir()

    with pytest.raises(FileNotFoundError, match=channel):
        upload_channels(channels_copy, f"s3://{bucket}/prefix")

    assert keys_under(s3, bucket) == {}
    assert sum(write_ops.values()) == 0


def test_nonexistent_bucket_fails_clearly(s3, channels_dir: Path) -> None:
    missing = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    with pytest.raises((ClientError, S3UploadFailedError)) as info:
        upload_channels(channels_dir, f"s3://{missing}/prefix")
    text = str(info.value)
    assert missing in text
    assert "NoSuchBucket" in text or "does not exist" in text
    assert missing not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}


# --- local destinations --------------------------------------------------------------------------

def assert_local_copy(dest: Path, channels: Path) -> None:
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == sorted(LAYOUT)
    for rel in LAYOUT:
        assert (dest / rel).read_bytes() == (channels / rel).read_bytes(), rel


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_upload_to_local_folder(channels_dir: Path, tmp_path: Path, as_uri: bool) -> None:
    root = tmp_path / "dest root"   # a space, to exercise file:// quoting
    dest = root.as_uri() if as_uri else str(root)

    result = upload_channels(channels_dir, dest)

    assert (result["uploaded"], result["skipped"]) == (4, 0)
    assert result["channels"] == {ch: f"{root / ch}/" for ch in ("train", "validation", "vocab")}
    assert_local_copy(root, channels_dir)
    mtimes = {rel: (root / rel).stat().st_mtime_ns for rel in LAYOUT}

    again = upload_channels(channels_dir, dest)

    assert (again["uploaded"], again["skipped"]) == (0, 4)
    assert {rel: (root / rel).stat().st_mtime_ns for rel in LAYOUT} == mtimes
    assert_local_copy(root, channels_dir)


def test_local_changed_and_extra_files(channels_copy: Path, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "dest"
    upload_channels(channels_copy, str(root))
    (channels_copy / "vocab" / "vocab.trg.json").write_text('{"changed": 1}\n')
    (root / "validation" / "stale.rec").write_bytes(b"old")

    with caplog.at_level(logging.WARNING, logger="pipeline_tasks.upload"):
        result = upload_channels(channels_copy, str(root))

    assert (result["uploaded"], result["skipped"]) == (1, 3)
    assert result["extra"] == [str(root / "validation" / "stale.rec")]
    assert any("stale.rec" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert (root / "vocab" / "vocab.trg.json").read_bytes() == b'{"changed": 1}\n'

    result = upload_channels(channels_copy, str(root), delete_extra=True)
    assert result["deleted"] == [str(root / "validation" / "stale.rec")]
    assert_local_copy(root, channels_copy)


# --- storage.parse -------------------------------------------------------------------------------

@pytest.mark.parametrize(("uri", "expected"), [
    ("s3://bucket/prefix/train/x.rec", storage.S3Location("bucket", "prefix/train/x.rec")),
    ("s3://bucket/prefix/", storage.S3Location("bucket", "prefix/")),
    ("s3://bucket", storage.S3Location("bucket", "")),
    ("s3://bucket/", storage.S3Location("bucket", "")),
    ("s3://bucket/a#b?c=d%20e f", storage.S3Location("bucket", "a#b?c=d%20e f")),
    ("file:///tmp/some%20dir/x", Path("/tmp/some dir/x")),
    ("file:///abs/path", Path("/abs/path")),
    ("/abs/path", Path("/abs/path")),
    ("relative/path", Path("relative/path")),
    (Path("/a/b"), Path("/a/b")),
])
def test_parse(uri, expected) -> None:
    assert storage.parse(uri) == expected


@pytest.mark.parametrize(("uri", "message"), [
    ("s3://", "bucket"),
    ("s3:///key-without-bucket", "bucket"),
    ("gs://x", "unsupported URI scheme 'gs'"),
    ("http://example.com/x", "unsupported URI scheme 'http'"),
])
def test_parse_rejects(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        storage.parse(uri)


def test_join() -> None:
    assert storage.join("s3://b/prefix", "train") == "s3://b/prefix/train"
    assert storage.join("s3://b/prefix/", "train", "x.rec") == "s3://b/prefix/train/x.rec"
    assert storage.join("s3://b", "train") == "s3://b/train"
    assert storage.join("/data/out", "train", "x.rec") == "/data/out/train/x.rec"
    assert storage.join("file:///data/out", "vocab") == "/data/out/vocab"


# --- CLI -----------------------------------------------------------------------------------------

def test_cli_upload(s3, bucket: str, channels_dir: Path, moto_endpoint: str) -> None:
    env = dict(os.environ)   # the module fixture's environment: moto endpoint, fake credentials
    assert env["AWS_ENDPOINT_URL"] == moto_endpoint
    cmd = [sys.executable, "-m", "pipeline_tasks", "upload", "--channels", str(channels_dir),
           "--destination", f"s3://{bucket}/p2"]

    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["uploaded"], result["skipped"]) == (4, 0)
    assert result["channels"]["train"] == f"s3://{bucket}/p2/train/"
    assert_uploaded(s3, bucket, "p2", channels_dir)

    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (json.loads(proc.stdout)["uploaded"], json.loads(proc.stdout)["skipped"]) == (0, 4)


def test_cli_upload_missing_channel_exits_1(channels_copy: Path, bucket: str) -> None:
    shutil.rmtree(channels_copy / "vocab")
    proc = subprocess.run([sys.executable, "-m", "pipeline_tasks", "upload", "--channels", str(channels_copy),
                           "--destination", f"s3://{bucket}/p3"],
                          cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "error:" in proc.stderr and "vocab" in proc.stderr
    assert proc.stdout == ""


def test_cli_upload_missing_bucket_is_one_line_error(channels_dir: Path, s3) -> None:
    proc = subprocess.run([sys.executable, "-m", "pipeline_tasks", "upload", "--channels", str(channels_dir),
                           "--destination", "s3://no-such-bucket-here/p"],
                          cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "error:" in proc.stderr and "no-such-bucket-here" in proc.stderr
