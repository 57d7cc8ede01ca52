"""Seed sets we send (spec "Seed sets we send"): each night, every agreement with `seed_set` in force
gets the seed set of our consenting customers in its outbox:

    s3://<outbox>/seeds/<date>/seeds.csv.gz (or seeds.parquet), manifest.json, _SUCCESS (last)

The members and their hashes are the mart seed_set_members (the seed_export exposure). Each member's
`seed_id` is the lowercase hex of the first 120 bits of HMAC-SHA256(key, agreement_id + "\\0" + profile_id):
the same profile gets the same token every night under one agreement, another under any other
agreement, and the token reveals nothing without the key. The key is the agreement's own, read from
the Airflow Variable `seed_set.secret_variable` (or its AIRFLOW_VAR_<NAME> environment variable),
never from the repository. The HMAC is computed inside DuckDB (sha256 over the HMAC pads, bound as
parameters, see seed_id_sql): the set is streamed from the warehouse to the file and never held in Python.

Before the objects are written, every issued seed is upserted into raw.issued_seeds (one transaction),
so a seed a partner holds always resolves to its profile. Each agreement's export is one row in
audit.seed_exports per run: sent, refused (no usable key: the other agreements still export) or failed
(raised after the others are done, so the task retries); counts only, never an identifier. A re-run of
the same date writes the same objects again (and any other object left in the folder, say the file of
an earlier format, is deleted). Earlier dates' seed folders are deleted once tonight's is complete
(data_rights.delete_superseded_seed_sets: data_rights.py is the one module that deletes).
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
import logging
import os
import struct
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from partner_pipeline import data_rights
from partner_pipeline.agreements import Agreement
from partner_pipeline.sqltext import quote_path
from partner_pipeline.storage import ensure_buckets

log = logging.getLogger(__name__)
MIN_KEY_CHARS = 32
SEED_ID_HEX_CHARS = 30  # 120 bits
COLUMNS = ("seed_id", "email_sha256", "phone_sha256")
# csv.gz is written as plain CSV by DuckDB and compressed by gzip_file: DuckDB's own gzip writer runs on one
# core at gzip's default level, the longest step of a seed set (see gzip_file)
COPY_OPTIONS = {"csv.gz": "FORMAT csv, HEADER true", "parquet": "FORMAT parquet, COMPRESSION zstd"}
# Hex digests compress to 58 % of their size at level 1 and to 57 % at level 6, which takes 3.4 times as
# long (100 MB of a seed set's CSV: 1.1 s against 3.7 s on one core).
GZIP_LEVEL = 1
GZIP_CHUNK_BYTES = 16 << 20


class SeedSecretMissing(RuntimeError):
    """An agreement's seed key is absent or too short: its export is refused, the night goes on."""


class SeedExportFailed(RuntimeError):
    """Some seed exports failed for a reason a retry may fix (object storage, disk); the others were done."""


def seed_key(agreement: Agreement) -> bytes:
    """The agreement's seed_id key, from its Airflow Variable (Task SDK: also AIRFLOW_VAR_<NAME>)."""
    from airflow.sdk import Variable

    name = agreement.seed_set.secret_variable
    value = Variable.get(name, default=None)
    if value is None or len(value) < MIN_KEY_CHARS:
        found = "is not set" if value is None else f"has {len(value)} characters, fewer than {MIN_KEY_CHARS}"
        raise SeedSecretMissing(
            f"agreement {agreement.agreement_id} (partner {agreement.partner_id}): the seed_id key, Airflow Variable "
            f"{name!r} (agreement field seed_set.secret_variable), {found}; its seed set is not sent. Fix: "
            f"`airflow variables set {name} \"$(openssl rand -hex 32)\"` (at least {MIN_KEY_CHARS} random characters, "
            f"kept secret and never changed: a new key gives every profile a new seed_id), or set the environment "
            f"variable AIRFLOW_VAR_{name.upper()}.")
    return value.encode()


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC-SHA256's inner and outer padded keys (RFC 2104): HMAC(k, m) = H(opad || H(ipad || m))."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def seed_id_sql(agreement_id: str, profile_id: str) -> str:
    """SQL for the seed_id of two SQL expressions, with parameters (outer pad, inner pad): HMAC-SHA256 as
    DuckDB's sha256 over BLOBs, truncated to 120 bits (tests check it against Python's hmac)."""
    return (f"substr(sha256(?::BLOB || unhex(sha256(?::BLOB || encode({agreement_id} || chr(0) || {profile_id})))), "
            f"1, {SEED_ID_HEX_CHARS})")


def export_seed_sets(con, client, settings, agreements: dict[str, Agreement], day: dt.date, run_id: str) -> list[dict]:
    """Every seed-enabled agreement in force on `day`: its seed set to its outbox. Returns one summary
    per agreement (status sent / refused / failed, seeds_sent, location or the reason)."""
    results, failures = [], []
    for partner_id, agreement in sorted(agreements.items()):
        if agreement.seed_set is None or not agreement.is_valid_on(day):
            continue
        bucket, _, prefix = agreement.outbox(settings.outbox_bucket).removeprefix("s3://").partition("/")
        folder = f"{prefix}seeds/{day.isoformat()}/"
        location = f"s3://{bucket}/{folder}"
        try:
            key = seed_key(agreement)
        except SeedSecretMissing as exc:
            log.error("%s", exc)
            results.append(_record(con, agreement, day, run_id, "refused", 0, None, {"reason": str(exc)}))
            continue
        try:
            details = _export(con, client, settings, agreement, key, bucket, folder, day, run_id)
        except Exception as exc:  # noqa: BLE001 - recorded, then raised once the other agreements are done
            log.exception("seed export for %s failed", partner_id)
            failures.append(f"{partner_id}: {type(exc).__name__}: {exc}")
            results.append(_record(con, agreement, day, run_id, "failed", 0, location, {"reason": f"{type(exc).__name__}: {exc}"}))
            continue
        results.append(_record(con, agreement, day, run_id, "sent", details["record_count"], location, details))
    if failures:
        raise SeedExportFailed("seed exports failed (the others were sent or refused; a retry exports again):\n  "
                               + "\n  ".join(failures))
    return results


def _record(con, agreement: Agreement, day: dt.date, run_id: str, status: str, seeds_sent: int, location: str | None,
            details: dict) -> dict:
    """The run's one audit.seed_exports row for this agreement (a retry of the run replaces it)."""
    con.execute("DELETE FROM audit.seed_exports WHERE partner_id = ? AND agreement_id = ? AND seed_date = ? AND run_id = ?",
                [agreement.partner_id, agreement.agreement_id, day, run_id])
    con.execute("INSERT INTO audit.seed_exports VALUES (?, ?, ?, ?, now(), ?, ?, ?, ?)",
                [agreement.partner_id, agreement.agreement_id, day, run_id, status, seeds_sent, location, json.dumps(details)])
    return {"partner_id": agreement.partner_id, "agreement_id": agreement.agreement_id, "status": status,
            "seeds_sent": seeds_sent, "location": location, **({"reason": details["reason"]} if "reason" in details else {})}


def _export(con, client, settings, agreement: Agreement, key: bytes, bucket: str, folder: str, day: dt.date,
            run_id: str) -> dict:
    ipad, opad = hmac_pads(key)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE seed_export AS
                    SELECT {seed_id_sql('agreement_id', 'profile_id')} AS seed_id, profile_id, email_sha256, phone_sha256
                    FROM marts.seed_set_members WHERE partner_id = ? AND agreement_id = ?""",
                [opad, ipad, agreement.partner_id, agreement.agreement_id])
    try:
        _issue(con, agreement, day)
        name = f"seeds.{agreement.seed_set.format}"
        ensure_buckets(client, [bucket])
        with tempfile.TemporaryDirectory(prefix="seeds-", dir=_scratch(settings)) as scratch:
            path = Path(scratch) / name
            # ordered by seed_id: the same set gives the same bytes, and the order says nothing about the profiles
            rows, digest = write_seed_file(con, f"SELECT {', '.join(COLUMNS)} FROM seed_export ORDER BY seed_id", [], path,
                                           agreement.seed_set.format)
            client.upload_file(str(path), bucket, folder + name)
        manifest = {"partner_id": agreement.partner_id, "agreement_id": agreement.agreement_id, "drop_date": day.isoformat(),
                    "kind": "seed_set", "mode": "full", "schema_version": 1,
                    "files": [{"key": name, "rows": rows, "sha256": digest}], "record_count": rows}
        client.put_object(Bucket=bucket, Key=folder + "manifest.json", Body=json.dumps(manifest, indent=2).encode())
        client.put_object(Bucket=bucket, Key=folder + "_SUCCESS", Body=b"")
    finally:
        con.execute("DROP TABLE IF EXISTS seed_export")
    superseded = data_rights.delete_superseded_seed_sets(con, client, bucket, folder.removesuffix(f"{day.isoformat()}/"),
                                                         agreement.partner_id, day, run_id, {name, "manifest.json", "_SUCCESS"})
    log.info("seed set of %s for %s: %d seeds to s3://%s/%s (%d earlier sets deleted)", agreement.partner_id, day, rows,
             bucket, folder, len(superseded))
    return {"format": agreement.seed_set.format, "files": manifest["files"], "record_count": rows,
            "superseded_sets_deleted": len(superseded)}


def write_seed_file(con, query: str, parameters: list, path: Path, file_format: str) -> tuple[int, str]:
    """Write the rows of `query` (our SQL, its values bound) to `path` in the seed set's format (csv.gz or
    parquet). Returns the rows written and the file's sha256."""
    if file_format != "csv.gz":
        rows = con.execute(f"COPY ({query}) TO {quote_path(path)} ({COPY_OPTIONS[file_format]})", parameters).fetchone()[0]
        return rows, _sha256(path)
    plain = path.with_name(path.name.removesuffix(".gz"))
    try:
        rows = con.execute(f"COPY ({query}) TO {quote_path(plain)} ({COPY_OPTIONS[file_format]})", parameters).fetchone()[0]
        return rows, gzip_file(plain, path)
    finally:
        plain.unlink(missing_ok=True)


def gzip_file(source: Path, target: Path) -> str:
    """Compress `source` into the gzip file `target` on every core, as pigz does: the input in chunks, each
    deflated on its own and all but the last ended on a byte boundary (a sync flush), so that their
    concatenation is one deflate stream, in one gzip member whose CRC-32 and size cover the whole input.
    Any gzip reader reads it; the same input gives the same bytes (no name, no time in the header).
    Returns the sha256 of `target`."""
    digest, crc, size = hashlib.sha256(), 0, 0
    workers = len(os.sched_getaffinity(0))
    with open(source, "rb") as src, open(target, "wb") as out, ThreadPoolExecutor(workers) as pool:
        def emit(data: bytes) -> None:
            out.write(data)
            digest.update(data)

        emit(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")  # deflate, no flags, no mtime, unknown OS
        in_flight = collections.deque()
        chunk = src.read(GZIP_CHUNK_BYTES)
        while True:
            following = src.read(GZIP_CHUNK_BYTES)
            crc, size = zlib.crc32(chunk, crc), size + len(chunk)
            in_flight.append(pool.submit(_deflate, chunk, not following))
            while len(in_flight) > 2 * workers or (in_flight and not following):
                emit(in_flight.popleft().result())
            if not following:
                break
            chunk = following
        emit(struct.pack("<II", crc, size & 0xFFFFFFFF))
    return digest.hexdigest()


def _deflate(chunk: bytes, last: bool) -> bytes:
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw deflate: gzip_file writes the frame
    return compressor.compress(chunk) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def _issue(con, agreement: Agreement, day: dt.date) -> None:
    """Upsert tonight's seeds into raw.issued_seeds in one transaction: first_issued_on kept, last_issued_on
    the latest night sent (a backfill of an earlier date moves neither back)."""
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("""UPDATE raw.issued_seeds AS issued
                       SET first_issued_on = least(issued.first_issued_on, ?), last_issued_on = greatest(issued.last_issued_on, ?)
                       FROM seed_export
                       WHERE issued.partner_id = ? AND issued.agreement_id = ? AND issued.seed_id = seed_export.seed_id""",
                    [day, day, agreement.partner_id, agreement.agreement_id])
        con.execute("""INSERT INTO raw.issued_seeds
                       SELECT ?, ?, seed_export.seed_id, seed_export.profile_id, ?, ? FROM seed_export
                       WHERE seed_export.seed_id NOT IN (SELECT seed_id FROM raw.issued_seeds
                                                         WHERE partner_id = ? AND agreement_id = ?)""",
                    [agreement.partner_id, agreement.agreement_id, day, day, agreement.partner_id, agreement.agreement_id])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _scratch(settings) -> Path:
    path = settings.data_dir / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
