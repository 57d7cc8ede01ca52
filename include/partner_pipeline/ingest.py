"""One drop, end to end up to the warehouse door: agreement, manifest, files, columns, rows.

Returns a `contracts.DropOutcome`; `warehouse.publish_outcome` applies it. A bad drop never raises:
it is quarantined (its objects copied beside a machine-readable report) and reported. Nor does a
pipeline fault confined to one drop (code `internal_error`): only a fault of the infrastructure
every drop shares (object storage, disk, memory) raises, so the task retries.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import logging
import re
import shutil
import time
from pathlib import Path

import botocore.exceptions
import duckdb

from partner_pipeline.agreements import Agreement
from partner_pipeline.contracts import DropOutcome, StageFile
from partner_pipeline.drops import MANIFEST, DropRef, check_agreement, parse_manifest
from partner_pipeline.problems import DropRejected, Problem, internal_error
from partner_pipeline.staging import connect, local_paths, stage_drop
from partner_pipeline.storage import read_bytes
from partner_pipeline.validation import row_failures_insert, validate_staged, validation_view_sql
from partner_pipeline.warehouse import attach_read_only, warehouse_exists

# Bump when ingestion rules change, so unchanged drops are processed again under the new rules.
INGEST_VERSION = "2"  # 2: v2 seed_id column, seed_id_unknown, partner-id-only rows

log = logging.getLogger(__name__)

# Ingest runs outside the warehouse pool: a writer (another night's publish, a backfill) may hold the
# warehouse, and DuckDB then lets no other process open it, not even read-only. Wait this long for it.
WAREHOUSE_LOCK_WAIT_SECONDS = 120.0


def processing_key(drop: DropRef, agreement: Agreement | None) -> str:
    """What decides an outcome: the delivery's content, the agreement, the ingestion rules."""
    agreement_text = agreement.model_dump_json() if agreement else "no-agreement"
    return hashlib.sha256(f"{drop.delivery_id}|{agreement_text}|{INGEST_VERSION}".encode()).hexdigest()[:20]


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def ingest_drop(client, drop: DropRef, agreements: dict[str, Agreement], run_id: str, settings) -> DropOutcome:
    agreement = agreements.get(drop.partner_id)
    work_dir, files = None, []  # no local path exists before the folder name is checked
    outcome = DropOutcome.of_drop(drop, status="new", run_id=run_id, processing_key=processing_key(drop, agreement))
    try:
        agreement = check_agreement(drop, agreements)
        work_dir = _work_dir(settings, drop)
        manifest = _read_manifest(client, drop)
        files = parse_manifest(drop, manifest, agreement)
        started = time.perf_counter()
        staged = stage_drop(client, drop, files, agreement, work_dir, settings)
        seconds = {"download_verify_load": round(time.perf_counter() - started, 2)}
        outcome = outcome.but(rows_received=staged.rows_received, checksums=staged.checksums, seconds=seconds,
                              dropped_columns=staged.dropped_columns, absent_attributes=staged.absent_attributes)
        started = time.perf_counter()
        copy_issued_seeds(staged.path, agreement, settings)
        outcome = _validate(staged.path, agreement, drop, run_id, settings, outcome)
        outcome = outcome.but(seconds={**seconds, "validate": round(time.perf_counter() - started, 2)})
        _check_bad_row_share(outcome, agreement, drop)
        outcome = outcome.but(status="staged", staging_path=str(staged.path))
    except DropRejected as rejected:
        outcome = outcome.but(status="quarantined", problems=[p.as_dict() for p in rejected.problems])
    except Exception as exc:  # one drop is its own failure domain; see the module docstring
        if is_infrastructure_fault(exc):
            raise
        log.exception("internal error on drop %s (delivery %s); quarantining it", drop.name, drop.delivery_id)
        local = {str(path): drop.prefix + key for path, key in local_paths(work_dir, files).items()} if work_dir else {}
        # no processing key: an unchanged drop is not "already processed" after a fault of ours, the next run retries it
        outcome = outcome.but(status="quarantined", processing_key=None, problems=[internal_error(exc, drop.prefix, {
            **local, str(settings.data_dir): "<data dir>"}).as_dict()])
    else:
        return outcome
    outcome = outcome.but(quarantine_report=quarantine_drop(client, drop, outcome, settings))
    if work_dir is not None:
        shutil.rmtree(work_dir, ignore_errors=True)
    return outcome


def _work_dir(settings, drop: DropRef) -> Path:
    """The drop's local folder, from checked parts only (check_agreement has validated partner_id)."""
    day = dt.date.fromisoformat(drop.drop_date).isoformat()
    if not re.fullmatch(r"[0-9a-f]{20}", drop.delivery_id):
        raise ValueError(f"delivery_id {drop.delivery_id!r} is not one the pipeline made")
    return settings.staging_dir / drop.partner_id / day / drop.delivery_id


_RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EROFS, errno.EIO}
_RESOURCE_WORDS = ("no space left", "disk full", "could not set lock", "out of memory", "read-only file system")


def is_infrastructure_fault(exc: BaseException) -> bool:
    """A fault of what every drop shares (object storage, disk, memory, credentials), which a retry may fix;
    anything else raised while ingesting one drop is that drop's internal error."""
    if isinstance(exc, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError,
                        botocore.exceptions.NoCredentialsError, ConnectionError, TimeoutError, MemoryError,
                        duckdb.OutOfMemoryException)):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or status in (401, 403, 429)  # 401/403: our credentials, not the drop
    if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS:
        return True
    return isinstance(exc, duckdb.IOException) and any(w in str(exc).lower() for w in _RESOURCE_WORDS)


def copy_issued_seeds(stage_path: Path, agreement: Agreement, settings) -> int:
    """Copy the seed ids issued to this agreement (raw.issued_seeds) into the stage file, for the rule
    seed_id_unknown; only when the drop carries a seed id. The warehouse is attached read-only; while
    another process writes it, retried for WAREHOUSE_LOCK_WAIT_SECONDS, then the lock error is raised
    (an infrastructure fault: the task retries). Returns the seeds copied."""
    con = connect(stage_path, settings)
    try:
        if not con.execute(f"SELECT count(seed_id) FROM {StageFile.RECORDS}").fetchone()[0]:
            return 0
        if not warehouse_exists(settings):
            return 0  # no warehouse yet: nothing was ever issued
        deadline, pause = time.monotonic() + WAREHOUSE_LOCK_WAIT_SECONDS, 0.5
        while True:
            try:
                attach_read_only(con, settings, "issuer")
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() + pause > deadline:
                    raise
                log.info("warehouse locked by a writer; reading the issued seeds again in %.1f s", pause)
                time.sleep(pause)
                pause = min(pause * 2, 10.0)
        try:
            has_table = con.execute("""SELECT count(*) FROM duckdb_tables() WHERE database_name = 'issuer'
                                       AND schema_name = 'raw' AND table_name = 'issued_seeds'""").fetchone()[0]
            if has_table:
                con.execute(f"""INSERT INTO {StageFile.ISSUED_SEEDS} SELECT DISTINCT seed_id FROM issuer.raw.issued_seeds
                                WHERE partner_id = ? AND agreement_id = ? AND seed_id IS NOT NULL""",
                            [agreement.partner_id, agreement.agreement_id])
        finally:
            con.execute("DETACH issuer")
        return con.execute(f"SELECT count(*) FROM {StageFile.ISSUED_SEEDS}").fetchone()[0]
    finally:
        con.close()


def _read_manifest(client, drop: DropRef) -> bytes | None:
    if not any(key == MANIFEST for key, _, _ in drop.objects):
        return None
    return read_bytes(client, drop.bucket, drop.prefix + MANIFEST)


def _validate(stage_path: Path, agreement: Agreement, drop: DropRef, run_id: str, settings, outcome: DropOutcome) -> DropOutcome:
    con = connect(stage_path, settings)
    con.execute(validation_view_sql(agreement, drop.delivered_at))
    con.close()
    name = safe_name(f"{drop.partner_id}__{drop.drop_date}__{drop.delivery_id}")
    result = validate_staged(stage_path, agreement, settings.validation_dir / safe_name(run_id), name,
                             settings.duckdb_config(stage_path.parent / "tmp"))
    con = connect(stage_path, settings)
    try:
        con.execute(StageFile.row_failures_ddl())
        if result.failures_by_rule:  # a clean drop is not scanned again
            con.execute(*row_failures_insert(agreement))
        found = dict(con.execute(f"SELECT {StageFile.RULE}, count(*) FROM {StageFile.ROW_FAILURES} GROUP BY ALL").fetchall())
        bad = con.execute(f"SELECT count(DISTINCT {StageFile.ROW}) FROM {StageFile.ROW_FAILURES}").fetchone()[0]
    finally:
        con.close()
    if found != result.failures_by_rule:  # the rules' SQL (row_rules) and GX disagree: a fault of ours, not the drop's
        raise RuntimeError(f"rows found breaking each rule {found} differ from Great Expectations' counts {result.failures_by_rule}")
    outcome = outcome.but(rows_valid=outcome.rows_received - bad, rows_quarantined=bad,
                          failures_by_rule=result.failures_by_rule, fixes_by_rule=result.fixes,
                          validation_result=str(result.result_path), data_docs=str(result.docs_path))
    return outcome


def _check_bad_row_share(outcome: DropOutcome, agreement: Agreement, drop: DropRef) -> None:
    received, bad = outcome.rows_received, outcome.rows_quarantined
    if received and bad / received > agreement.max_bad_row_share:
        top = ", ".join(f"{rule} ({n})" for rule, n in sorted(outcome.failures_by_rule.items(), key=lambda kv: -kv[1])[:5])
        raise DropRejected([Problem(
            "too_many_bad_rows",
            f"{bad} of {received} rows ({bad / received:.1%}) break the row rules, over the agreement's "
            f"max_bad_row_share of {agreement.max_bad_row_share:.1%}; most frequent: {top}.",
            f"Fix the rows (see {Path(outcome.data_docs).name}) and re-deliver the drop.", file=drop.prefix)])


def quarantine_drop(client, drop: DropRef, outcome: DropOutcome, settings) -> str:
    """Copy the drop's objects into the quarantine area with report.json beside them."""
    target = f"{drop.partner_id}/{drop.drop_date}/{drop.delivery_id}/"
    copied = []
    for key, _, _ in drop.objects:
        client.copy_object(Bucket=settings.quarantine_bucket, Key=target + key,
                           CopySource={"Bucket": drop.bucket, "Key": drop.prefix + key})
        copied.append(key)
    report = {
        "partner_id": drop.partner_id, "drop_date": drop.drop_date, "delivery_id": drop.delivery_id,
        "delivered_at": drop.delivered_at, "source": f"s3://{drop.bucket}/{drop.prefix}",
        "run_id": outcome.run_id, "status": "quarantined", "problems": list(outcome.problems),
        "objects": copied, "reported_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    client.put_object(Bucket=settings.quarantine_bucket, Key=target + "report.json",
                      Body=json.dumps(report, indent=2, sort_keys=True).encode(), ContentType="application/json")
    return f"s3://{settings.quarantine_bucket}/{target}report.json"
