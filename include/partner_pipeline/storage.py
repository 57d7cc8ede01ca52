"""Object storage access (boto3, path-style so any S3-compatible server works)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator

import boto3
from botocore.config import Config

from partner_pipeline.settings import Settings

_CHUNK = 8 * 1024 * 1024


def s3_client(endpoint_url: str | None, access_key: str | None, secret_key: str | None, region: str = "us-east-1"):
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}),
    )


def client_from_settings(settings: Settings):
    return s3_client(settings.s3_endpoint_url, settings.aws_access_key_id, settings.aws_secret_access_key, settings.aws_region)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: str  # ISO 8601, UTC


def list_objects(client, bucket: str, prefix: str, delimiter: str | None = None) -> Iterator[ObjectInfo]:
    kwargs = {"Bucket": bucket, "Prefix": prefix}
    if delimiter:
        kwargs["Delimiter"] = delimiter
    for page in client.get_paginator("list_objects_v2").paginate(**kwargs):
        for obj in page.get("Contents", []):
            yield ObjectInfo(obj["Key"], obj["Size"], obj["ETag"].strip('"'), obj["LastModified"].isoformat())


def list_prefixes(client, bucket: str, prefix: str) -> list[str]:
    """The 'folders' directly under prefix, without the prefix and trailing slash."""
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            found.append(common["Prefix"][len(prefix):].rstrip("/"))
    return found


def download_with_sha256(client, bucket: str, key: str, target: Path) -> str:
    """Stream an object to a local file and return the sha256 hex of its bytes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    with open(target, "wb") as out:
        for chunk in iter(lambda: body.read(_CHUNK), b""):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def read_bytes(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def ensure_buckets(client, buckets: list[str]) -> None:
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in buckets:
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
