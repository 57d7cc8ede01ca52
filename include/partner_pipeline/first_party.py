"""Our own customers: the newest complete first-party snapshot dated on or before the run's date.

Loaded as delivered (text) into `raw.first_party_profiles`, replacing the previous snapshot;
the dbt staging model types it and the identifier macros normalize and hash it. A night whose
snapshot is the one last loaded, object for object (key, size, ETag: audit.first_party_loads), does
not load it again: the table already holds it, but for the profiles erased since, which data_rights
deleted from it and a load would leave out too (without_erased_profiles).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil

from partner_pipeline.data_rights import without_erased_profiles
from partner_pipeline.drops import DATA_SUFFIXES, SUCCESS, data_suffix
from partner_pipeline.storage import download_with_sha256, list_objects, list_prefixes

log = logging.getLogger(__name__)
PREFIX = "profiles/"
REQUIRED = ("profile_id", "email", "phone", "country", "consent_marketing")
# Bump when what a load makes of the same objects changes, so that the next night loads them again.
LOAD_VERSION = 1


class SnapshotError(RuntimeError):
    pass


def newest_snapshot(client, bucket: str, day: dt.date) -> str | None:
    """The newest `profiles/<date>/` with `_SUCCESS` and date <= day, as its date string."""
    dates = sorted((d for d in list_prefixes(client, bucket, PREFIX) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", d)), reverse=True)
    for snapshot in dates:
        if dt.date.fromisoformat(snapshot) > day:
            continue
        keys = {o.key for o in list_objects(client, bucket, f"{PREFIX}{snapshot}/")}
        if f"{PREFIX}{snapshot}/{SUCCESS}" in keys:
            return snapshot
    return None


def load_snapshot(con, client, bucket: str, day: dt.date, work_dir) -> dict:
    """Replace raw.first_party_profiles with the snapshot in force on `day`; returns what was loaded."""
    snapshot = newest_snapshot(client, bucket, day)
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    if snapshot is None:
        # Not a failed night (e.g. a backfill before the first snapshot): the date is built against
        # no profiles, as the spec's "newest snapshot on or before D" says, and the run says so.
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("CREATE OR REPLACE TABLE raw.first_party_profiles ("
                        + ", ".join(f"{c} VARCHAR" for c in REQUIRED) + ", snapshot_date DATE)")
            _record_load(con, day, None, None, 0)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        warning = (f"no complete first-party snapshot s3://{bucket}/{PREFIX}<date>/ dated on or before {day} "
                   f"(complete = has _SUCCESS): nothing is matched for this date. Deliver a snapshot and re-run {day}.")
        log.warning(warning)
        return {"snapshot_date": None, "profiles": 0, "files": [], "warning": warning}
    prefix = f"{PREFIX}{snapshot}/"
    objects = sorted((o.key, o.size, o.etag) for o in list_objects(client, bucket, prefix) if o.key.endswith(DATA_SUFFIXES))
    files = [key for key, _, _ in objects]
    if not files:
        raise SnapshotError(f"s3://{bucket}/{prefix} has _SUCCESS but no .csv, .csv.gz or .parquet file")
    source = {"bucket": bucket, "objects": objects, "load_version": LOAD_VERSION}
    # the objects' keys name the snapshot's date: the same source is the same snapshot
    last = con.execute("SELECT source FROM audit.first_party_loads ORDER BY loaded_at DESC LIMIT 1").fetchone()
    if last is not None and last[0] is not None and json.loads(last[0]) == json.loads(json.dumps(source)):
        rows = con.execute("SELECT count(*) FROM raw.first_party_profiles").fetchone()[0]
        log.info("first-party snapshot %s: unchanged since its last load, %d profiles (not loaded again)", snapshot, rows)
        return {"snapshot_date": snapshot, "profiles": rows, "files": files, "loaded": False}
    if work_dir.exists():
        shutil.rmtree(work_dir)
    local = []
    for index, key in enumerate(files):  # local names are ours; paths reach DuckDB as bound parameters
        target = work_dir / f"{index:04d}{data_suffix(key)}"
        download_with_sha256(client, bucket, key, target)
        local.append(str(target))
    csv = [p for p in local if not p.endswith(".parquet")]
    parquet = [p for p in local if p.endswith(".parquet")]
    sources, parameters = [], [snapshot]
    if csv:
        sources.append("SELECT * FROM read_csv(?, header=true, all_varchar=true, union_by_name=true)")
        parameters.append(csv)
    if parquet:
        sources.append("SELECT * FROM read_parquet(?, union_by_name=true)")
        parameters.append(parquet)
    select = f"SELECT *, ?::DATE AS snapshot_date FROM ({' UNION ALL BY NAME '.join(sources)})"
    con.execute("BEGIN TRANSACTION")
    try:
        columns = {d[0] for d in con.execute(f"SELECT * FROM ({select}) LIMIT 0", parameters).description}
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise SnapshotError(f"s3://{bucket}/{prefix}: required column(s) {', '.join(missing)} missing; "
                                f"the snapshot needs {', '.join(REQUIRED)}")
        # the erased stay out of it (data_rights: their rows would only be deleted again)
        con.execute(f"CREATE OR REPLACE TABLE raw.first_party_profiles AS {without_erased_profiles(select)}", parameters)
        rows = con.execute("SELECT count(*) FROM raw.first_party_profiles").fetchone()[0]
        _record_load(con, day, snapshot, source, rows)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    log.info("first-party snapshot %s: %d profiles", snapshot, rows)
    return {"snapshot_date": snapshot, "profiles": rows, "files": files, "loaded": True}


def _record_load(con, day: dt.date, snapshot: str | None, source: dict | None, rows: int) -> None:
    """The load's row of audit.first_party_loads, in the load's transaction (no snapshot: source NULL)."""
    con.execute("INSERT INTO audit.first_party_loads VALUES (?, ?, ?, ?, now())",
                [day, snapshot, None if source is None else json.dumps(source), rows])
