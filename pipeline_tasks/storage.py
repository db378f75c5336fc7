"""Artifact URIs: a plain path, `file://…` or `s3://bucket/key` (docs/ARCHITECTURE.md §6).

S3 goes through boto3, which honours AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, so MinIO, LocalStack
and moto's server work unchanged. Local writes are atomic (temp + rename); S3 objects appear whole
when their upload completes and are verified afterwards.
"""

from __future__ import annotations

import logging
import os
import shutil
import urllib.parse
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from model.archive import sha256_file
from pipeline_tasks.atomic import staged_file

log = logging.getLogger(__name__)

SHA256_METADATA = "sha256"           # x-amz-meta-sha256 on every object we upload
MULTIPART_THRESHOLD = 64 << 20
MULTIPART_CHUNK = 64 << 20


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def child(self, name: str) -> S3Location:
        base = self.key.rstrip("/")
        return S3Location(self.bucket, f"{base}/{name}" if base else name)


def parse(uri: str | os.PathLike[str]) -> S3Location | Path:
    """An S3Location for s3:// URIs, a local Path for file:// URIs and plain paths."""
    text = os.fspath(uri)
    parts = urllib.parse.urlsplit(text)
    if parts.scheme == "s3":
        # The key is everything after the bucket, as is: '#' and '?' are legal in S3 keys, and
        # urlsplit would cut them off as fragment/query (so a delete would miss the object).
        bucket, _, key = text.split("://", 1)[1].partition("/")
        if not bucket:
            raise ValueError(f"{text}: an S3 URI needs a bucket (s3://bucket/key)")
        return S3Location(bucket, key.lstrip("/"))
    if parts.scheme == "file":
        return Path(urllib.parse.unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:
        raise ValueError(f"{text}: unsupported URI scheme {parts.scheme!r} (use a path, file:// or s3://)")
    return Path(text)


def join(uri: str, *names: str) -> str:
    """Append path segments to a URI or path."""
    loc = parse(uri)
    if isinstance(loc, S3Location):
        for n in names:
            loc = loc.child(n)
        return str(loc)
    return str(loc.joinpath(*names))


@lru_cache(maxsize=1)
def s3_client():
    """One boto3 S3 client per process (clients are thread-safe; creating one costs ~50 ms)."""
    import boto3
    return boto3.client("s3")




def _transfer_config():
    from boto3.s3.transfer import TransferConfig
    return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK)


def put_file(local: str | os.PathLike[str], uri: str, digest: str | None = None) -> bool:
    """Copy a local file to `uri` unless an object/file of the same size and sha256 is already there.

    Returns True when bytes were written. S3 uploads are multipart above 64 MiB, carry the sha256 in
    the object's metadata (that is what makes the skip possible), and are verified by a HEAD after.
    """
    local = Path(local)
    size = local.stat().st_size
    digest = digest or sha256_file(local)
    dest = parse(uri)
    if isinstance(dest, S3Location):
        client = s3_client()
        existing = head(dest)
        same = existing and existing["ContentLength"] == size and existing.get("Metadata", {}).get(SHA256_METADATA)
        if same == digest:
            log.info("%s: already there (%d bytes, same sha256), skipped", dest, size)
            return False
        client.upload_file(str(local), dest.bucket, dest.key, Config=_transfer_config(),
                           ExtraArgs={"Metadata": {SHA256_METADATA: digest}})
        after = head(dest)
        if not after or after["ContentLength"] != size:
            raise OSError(f"{dest}: verification after upload failed (expected {size} bytes, "
                          f"found {after['ContentLength'] if after else 'no object'})")
        log.info("%s: uploaded %d bytes", dest, size)
        return True
    if dest.is_file() and dest.stat().st_size == size and sha256_file(dest) == digest:
        log.info("%s: already there (%d bytes, same sha256), skipped", dest, size)
        return False
    with open(local, "rb") as src, staged_file(dest) as out:
        shutil.copyfileobj(src, out, 1 << 20)
    log.info("%s: copied %d bytes", dest, size)
    return True


def head(loc: S3Location) -> dict | None:
    """HEAD an object; None when it does not exist."""
    from botocore.exceptions import ClientError
    try:
        return s3_client().head_object(Bucket=loc.bucket, Key=loc.key)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def exists(uri: str) -> bool:
    """Whether one object/file is there (a folder or prefix is not a file)."""
    loc = parse(uri)
    return head(loc) is not None if isinstance(loc, S3Location) else loc.is_file()


def list_files(uri: str) -> dict[str, int]:
    """Relative name -> size of every object/file under a prefix/folder."""
    loc = parse(uri)
    if isinstance(loc, S3Location):
        prefix = loc.key.rstrip("/") + "/" if loc.key else ""
        out: dict[str, int] = {}
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"][len(prefix):]] = obj["Size"]
        return out
    if not loc.is_dir():
        return {}
    return {str(p.relative_to(loc)): p.stat().st_size for p in sorted(loc.rglob("*")) if p.is_file()}


def delete(uri: str) -> None:
    loc = parse(uri)
    if isinstance(loc, S3Location):
        s3_client().delete_object(Bucket=loc.bucket, Key=loc.key)
    else:
        loc.unlink(missing_ok=True)


def get_file(uri: str, local: str | os.PathLike[str]) -> Path:
    """Fetch an object/file to a local path (atomically), streaming."""
    loc = parse(uri)
    local = Path(local)
    if isinstance(loc, S3Location):
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.download")
        try:
            s3_client().download_file(loc.bucket, loc.key, str(tmp), Config=_transfer_config())
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)
        return local
    with open(loc, "rb") as src, staged_file(local) as out:
        shutil.copyfileobj(src, out, 1 << 20)
    return local
