"""The warehouse: raw partner tables, quarantined rows, the audit log and activation state; on the
DuckDB file (the default) with the marts file attached as catalog `marts`, or in the lake
(PIPELINE_WAREHOUSE=lake, lake.py), where the marts are the lake's schema `marts`.

Only tasks in the single-slot `duckdb_warehouse` pool open it for writing, because DuckDB allows
one writing process per file (and the embedded lake catalog one writer at a time). Each drop is
applied in one transaction: a failed run leaves either the old delivery or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import inspect
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from collections.abc import Iterator

import duckdb

from partner_pipeline import lake
from partner_pipeline.agreements import RECORD_COLUMNS, Agreement
from partner_pipeline.contracts import DropOutcome, StageFile
from partner_pipeline.governance import Governance
from partner_pipeline.settings import WAREHOUSE_POOL
from partner_pipeline.sqltext import quote_configured_name, quote_ident, quote_path

log = logging.getLogger(__name__)

# How an identifier is matched for erasure, defined once: SQL macros of the warehouse (created or replaced
# with its tables on every write session, below) that the dbt models and the pipeline's SQL call;
# data_rights runs the same macros (its _keying connection) for what it reads outside the warehouse.
# - normalization, as the row rules compare identifiers: a hash lowercased and trimmed of spaces, tabs and
#   line breaks, a partner person id trimmed, empty meaning absent; so a malformed row (an uppercase or
#   padded hash, kept in quarantine as evidence) still names the person;
# - the suppression key: the suppression list holds sha256('erasure:' || identifier), never the identifier
#   (a profile id, partner_id || ':' || normalized partner_person_id, or a normalized email/phone hash).
_BLANKS = "' ' || chr(9) || chr(10) || chr(13)"
NORMAL_HASH_MACRO = f"CREATE OR REPLACE MACRO audit.normal_hash(value) AS nullif(lower(trim(value, {_BLANKS})), '')"
NORMAL_PERSON_ID_MACRO = f"CREATE OR REPLACE MACRO audit.normal_person_id(value) AS nullif(trim(value, {_BLANKS}), '')"
SUPPRESSION_KEY_MACRO = "CREATE OR REPLACE MACRO audit.suppression_key(identifier) AS sha256('erasure:' || identifier)"
DATA_RIGHTS_MACROS = "".join(f"{macro};\n" for macro in (NORMAL_HASH_MACRO, NORMAL_PERSON_ID_MACRO, SUPPRESSION_KEY_MACRO))
PROVENANCE_COLUMNS = (
    ("partner_id", "VARCHAR"), ("drop_date", "DATE"), ("delivery_id", "VARCHAR"), ("delivered_at", "TIMESTAMPTZ"),
    ("source_file", "VARCHAR"), ("source_row", "BIGINT"), ("loaded_at", "TIMESTAMPTZ"), ("run_id", "VARCHAR"),
)
_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS audit;
-- every partner's valid rows, one table for all partners: the spec's record columns as delivered (text),
-- the agreed attributes the row gives a value for as (attribute, value) pairs, and provenance; an
-- agreement amended or a partner added needs no DDL
CREATE TABLE IF NOT EXISTS raw.partner_records (
    partner_record_id VARCHAR, partner_person_id VARCHAR, email_sha256 VARCHAR, phone_sha256 VARCHAR,
    consent_enrichment VARCHAR, consent_activation VARCHAR, consent_ts VARCHAR,
    attributes STRUCT(attribute VARCHAR, value VARCHAR)[],
    partner_id VARCHAR, drop_date DATE, delivery_id VARCHAR, delivered_at TIMESTAMPTZ,
    source_file VARCHAR, source_row BIGINT, loaded_at TIMESTAMPTZ, run_id VARCHAR, seed_id VARCHAR);
-- v2 `seed_id` (spec "Seeds in drops"), for a warehouse made before it (appended: every insert names its columns)
ALTER TABLE raw.partner_records ADD COLUMN IF NOT EXISTS seed_id VARCHAR;
CREATE TABLE IF NOT EXISTS raw.quarantined_rows (
    partner_id VARCHAR, drop_date DATE, delivery_id VARCHAR, source_file VARCHAR, source_row BIGINT,
    partner_record_id VARCHAR, failed_rules VARCHAR[], record JSON, run_id VARCHAR, quarantined_at TIMESTAMPTZ);
-- append-only, never deleted from: a row's rowid is its place in the log (event_id = rowid + 1, in
-- stg_pipeline__drop_events), as on DuckLake, which has no sequences and keeps rowids as row lineage
CREATE TABLE IF NOT EXISTS audit.drop_events (
    recorded_at TIMESTAMPTZ, run_id VARCHAR,
    partner_id VARCHAR, drop_date DATE, delivery_id VARCHAR, processing_key VARCHAR, event VARCHAR,
    rows_received BIGINT, rows_loaded BIGINT, rows_quarantined BIGINT,
    checksums JSON, reasons JSON, details JSON);
-- a warehouse from before: the same order, from the rowid (a sequence's numbers also had the gaps of rolled-back runs)
ALTER TABLE audit.drop_events DROP COLUMN IF EXISTS event_id;
DROP SEQUENCE IF EXISTS audit.drop_event_seq;
CREATE TABLE IF NOT EXISTS audit.model_builds (run_date DATE, run_id VARCHAR, built_at TIMESTAMPTZ);
-- what the last declaring write session declared (_declare): the fingerprint of these declarations
CREATE TABLE IF NOT EXISTS audit.declarations (fingerprint VARCHAR, declared_at TIMESTAMPTZ);
-- each night's marts published to analysts (transform.publish_for_analysts); on the lake, the snapshot they read
CREATE TABLE IF NOT EXISTS audit.publications (run_id VARCHAR, run_date DATE, snapshot_id BIGINT, published_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS audit.privacy_budget_ledger (
    partner_id VARCHAR, period VARCHAR, release_date DATE, run_id VARCHAR, epsilon DOUBLE, recorded_at TIMESTAMPTZ, status VARCHAR);
CREATE TABLE IF NOT EXISTS audit.overlap_releases (
    partner_id VARCHAR, release_date DATE, run_id VARCHAR, released_at TIMESTAMPTZ, release JSON);
-- a rewrite of the file (rewrite_warehouse) owed once the erased people are off every destination
CREATE TABLE IF NOT EXISTS audit.rewrite_due (run_id VARCHAR, reason VARCHAR, requested_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS audit.data_deletions (
    deleted_at TIMESTAMPTZ, run_id VARCHAR, reason VARCHAR, request_id VARCHAR, location VARCHAR, partner_id VARCHAR,
    drop_date DATE, rows BIGINT);
-- data subjects' requests: identifiers in clear only until the request is answered
CREATE TABLE IF NOT EXISTS raw.erasure_requests (
    request_id VARCHAR, received_at VARCHAR, request_date DATE, source_file VARCHAR, source_row BIGINT,
    profile_id VARCHAR, email VARCHAR, email_sha256 VARCHAR);
CREATE TABLE IF NOT EXISTS raw.access_requests (
    request_id VARCHAR, received_at VARCHAR, request_date DATE, source_file VARCHAR, source_row BIGINT,
    profile_id VARCHAR, email VARCHAR);
-- never an identifier itself: suppression_key = audit.suppression_key(x) (SUPPRESSION_KEY_MACRO), x being a
-- profile id, partner_id || ':' || audit.normal_person_id(partner_person_id), audit.normal_person_id(seed_id), or an audit.normal_hash(email/phone hash)
CREATE TABLE IF NOT EXISTS audit.erasure_suppressions (
    request_id VARCHAR, identifier_kind VARCHAR, suppression_key VARCHAR, added_at TIMESTAMPTZ);
-- what each partner's outbox notice must say; emptied once the notices are written
CREATE TABLE IF NOT EXISTS audit.pending_erasure_notices (
    request_id VARCHAR, partner_id VARCHAR, partner_person_id VARCHAR, email_sha256 VARCHAR);
CREATE TABLE IF NOT EXISTS audit.data_subject_requests (
    request_id VARCHAR, request_type VARCHAR, request_date DATE, run_id VARCHAR, answered_at TIMESTAMPTZ,
    status VARCHAR, profiles_found INTEGER, receipt JSON, location VARCHAR);
-- mirrored from the agreement and governance files on every run (publish_agreements, publish_governance)
CREATE TABLE IF NOT EXISTS raw.agreements (partner_id VARCHAR, agreement_id VARCHAR, valid_from DATE,
    valid_to DATE, hash_profile VARCHAR, default_country_code VARCHAR, required_consents VARCHAR[],
    retention_days INTEGER, max_bad_row_share DOUBLE, min_group_size INTEGER, outbox_uri VARCHAR,
    overlap_dimensions VARCHAR[], dp_epsilon_per_release DOUBLE, dp_budget_per_period DOUBLE, dp_period VARCHAR,
    seed_set_format VARCHAR, partner_id_only_rows BOOLEAN);
-- the v2 columns, for a warehouse made before them (appended, so the mirror's positional INSERT still fits)
ALTER TABLE raw.agreements ADD COLUMN IF NOT EXISTS seed_set_format VARCHAR;
ALTER TABLE raw.agreements ADD COLUMN IF NOT EXISTS partner_id_only_rows BOOLEAN;
ALTER TABLE raw.agreements ADD COLUMN IF NOT EXISTS partner_person_id_usage_labels VARCHAR[];
CREATE TABLE IF NOT EXISTS raw.agreement_attributes (partner_id VARCHAR, attribute VARCHAR, type VARCHAR,
    allowed_values VARCHAR[], min_value DOUBLE, max_value DOUBLE, usage_labels VARCHAR[], special_category BOOLEAN,
    description VARCHAR);
CREATE TABLE IF NOT EXISTS raw.destinations (destination_id VARCHAR, destination_type VARCHAR,
    marketing_actions VARCHAR[], hash_profile VARCHAR, default_country_code VARCHAR, identifiers VARCHAR[],
    export_uri VARCHAR, export_format VARCHAR, connection_id VARCHAR);
-- the partner whose partner_person_id the destination accepts (identifiers `partner_id:<partner>`), and the
-- smallest audience it is sent; appended for warehouses made before them
ALTER TABLE raw.destinations ADD COLUMN IF NOT EXISTS partner_ids_of VARCHAR;
ALTER TABLE raw.destinations ADD COLUMN IF NOT EXISTS min_audience_size INTEGER;
CREATE TABLE IF NOT EXISTS raw.usage_policies (policy_id VARCHAR, description VARCHAR,
    marketing_actions VARCHAR[], requires_label VARCHAR, denied_label VARCHAR);
-- the first-party snapshot in force; first_party.load_snapshot replaces it with the snapshot's own columns
CREATE TABLE IF NOT EXISTS raw.first_party_profiles (profile_id VARCHAR, email VARCHAR, phone VARCHAR, country VARCHAR,
    consent_marketing VARCHAR, snapshot_date DATE);
-- each night's first-party load: the snapshot's objects as read (key, size, ETag), so that a night whose snapshot
-- is unchanged does not load it again (first_party.load_snapshot); none of them personal data
CREATE TABLE IF NOT EXISTS audit.first_party_loads (run_date DATE, snapshot_date DATE, source JSON, profiles BIGINT,
    loaded_at TIMESTAMPTZ);
-- v2 seed sets (spec "Seed sets we send"): every seed_id issued, one row per (agreement, profile), so a
-- partner's seed-keyed row resolves to the profile it was issued for; and each night's export, counts only
CREATE TABLE IF NOT EXISTS raw.issued_seeds (partner_id VARCHAR, agreement_id VARCHAR, seed_id VARCHAR,
    profile_id VARCHAR, first_issued_on DATE, last_issued_on DATE);
CREATE TABLE IF NOT EXISTS audit.seed_exports (partner_id VARCHAR, agreement_id VARCHAR, seed_date DATE, run_id VARCHAR,
    exported_at TIMESTAMPTZ, status VARCHAR, seeds_sent BIGINT, location VARCHAR, details JSON);
CREATE SCHEMA IF NOT EXISTS activation;
CREATE TABLE IF NOT EXISTS activation.destination_members (
    destination_id VARCHAR, segment_name VARCHAR, profile_id VARCHAR, email_sha256 VARCHAR, phone_sha256 VARCHAR,
    synced_at TIMESTAMPTZ, run_id VARCHAR);
-- the partner's person id sent with the member (a destination accepting that partner's ids)
ALTER TABLE activation.destination_members ADD COLUMN IF NOT EXISTS partner_person_id VARCHAR;
-- one row per (destination, segment), which activation._sync_state keeps (no key constraint: DuckLake has none)
CREATE TABLE IF NOT EXISTS activation.syncs (
    destination_id VARCHAR, segment_name VARCHAR, batches_applied BIGINT, last_synced_at TIMESTAMPTZ,
    last_run_date DATE, last_run_id VARCHAR, full_refresh_run_id VARCHAR, members_held BIGINT);
-- append-only like audit.drop_events: log order is the rowid (log_id = rowid + 1, in the mart activation_log)
CREATE TABLE IF NOT EXISTS activation.activation_log (
    logged_at TIMESTAMPTZ, run_id VARCHAR, run_date DATE,
    destination_id VARCHAR, segment_name VARCHAR, operation VARCHAR, batch_number INTEGER, adds BIGINT, removes BIGINT,
    attempt INTEGER, status VARCHAR, response_code INTEGER, idempotency_key VARCHAR, detail VARCHAR);
ALTER TABLE activation.activation_log DROP COLUMN IF EXISTS log_id;
DROP SEQUENCE IF EXISTS activation.log_seq;
-- the last relations of models since moved, as dbt drops nothing it no longer builds (the staging models
-- stg_pipeline__erasure_request_keys and stg_pipeline__erased_rows, the data-rights marts and partner_overlap_counts replaced them)
DROP TABLE IF EXISTS intermediate.int_erasure_identifiers;
DROP TABLE IF EXISTS intermediate.int_data_rights_deletions;
DROP VIEW IF EXISTS intermediate.int_access_request_subjects;
DROP TABLE IF EXISTS intermediate.int_partner_overlap_counts;
""" + DATA_RIGHTS_MACROS


class WarehouseLocked(RuntimeError):
    pass


@contextlib.contextmanager
def warehouse(settings, read_only: bool = False, declare: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the warehouse (settings.warehouse_kind: the DuckDB file, or the lake as the
    connection's default catalog), its tables made or brought up to date when writing (unless not
    `declare`: a drop's own commit, which must not race the other drops' on DDL), the marts file
    attached as catalog `marts`. Writing on the embedded lake takes its writer turn."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    on_lake = settings.warehouse_kind == "lake"
    with contextlib.ExitStack() as stack:
        if on_lake and not read_only:
            stack.enter_context(lake.writer_turn(settings))
        con = _open_lake(settings, read_only) if on_lake else _open_file(settings, read_only)
        stack.callback(con.close)
        if not read_only and declare:
            _declare(con, on_lake)
        # on the file, the marts (dbt builds them into their own file, which publishing copies whole) read as
        # marts.<table>; on the lake, marts.<table> is the lake's schema marts
        if not on_lake and (not read_only or settings.marts_path.exists()):
            con.execute(f"ATTACH {quote_path(settings.marts_path)} AS marts" + (" (READ_ONLY)" if read_only else ""))
        con.execute("SET TimeZone = 'UTC'")
        yield con


def _declare(con, on_lake: bool) -> None:
    """Make the warehouse's tables and macros, or bring an older warehouse's up to date: once per
    version of these declarations (audit.declarations holds the fingerprint of the last), since on
    the lake each of them is a commit, and together they cost a write session ~0.7 s. The history
    hand-over is checked every time: it waits for a dbt build."""
    try:
        declared = con.execute("SELECT max_by(fingerprint, declared_at) FROM audit.declarations").fetchone()[0]
    except duckdb.CatalogException:
        declared = None  # a warehouse from before the fingerprint, or none yet
    if declared != _DECLARATIONS:
        con.execute(_SCHEMA)
        migrate_partner_tables(con)
        if on_lake:
            lake.set_parquet_options(con)
        if not on_lake:
            # a warehouse file from before the marts had their own file holds a `marts` schema that would shadow them
            con.execute("DROP SCHEMA IF EXISTS marts CASCADE")
        con.execute("DELETE FROM audit.declarations")
        con.execute("INSERT INTO audit.declarations VALUES (?, now())", [_DECLARATIONS])
    drop_taken_over_history(con)


def _open_file(settings, read_only: bool) -> duckdb.DuckDBPyConnection:
    path = settings.warehouse_path
    path.parent.mkdir(parents=True, exist_ok=True)
    config = settings.duckdb_config(path.parent / "tmp")
    if read_only and not warehouse_exists(settings):
        return _empty_warehouse(config)
    try:
        return duckdb.connect(str(path), read_only=read_only, config=config)
    except duckdb.IOException as exc:
        raise WarehouseLocked(
            f"{path} is held by another process ({exc}). Only pipeline tasks in the "
            f"'{WAREHOUSE_POOL}' pool may open it; close other sessions (analysts read the published copy)."
        ) from exc


def _open_lake(settings, read_only: bool) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake attached and in use: unqualified names (raw.*, audit.*) are the lake's."""
    config = settings.duckdb_config(settings.data_dir / "tmp")
    if read_only and not settings.lake_catalog.startswith("postgres:") and not warehouse_exists(settings):
        return _empty_warehouse(config)  # (a PostgreSQL catalog is found missing by the attach itself, below)
    if not read_only:
        lake.ensure_data_bucket(settings)
    con = duckdb.connect(config=config)
    try:
        lake.attach(con, settings, read_only=read_only)
        con.execute(f"USE {lake.CATALOG}")
    except duckdb.InvalidInputException as exc:
        con.close()
        if read_only and lake.is_not_made(exc):
            return _empty_warehouse(config)
        raise
    except BaseException:
        con.close()
        raise
    return con


def warehouse_exists(settings) -> bool:
    return lake.catalog_exists(settings) if settings.warehouse_kind == "lake" else settings.warehouse_path.exists()


def attach_read_only(con: duckdb.DuckDBPyConnection, settings, alias: str) -> None:
    """Attach the warehouse (file or lake) to another connection as catalog `alias`, read-only.
    The file raises duckdb.IOException while a writer holds it; the lake's readers never wait."""
    if settings.warehouse_kind == "lake":
        lake.attach(con, settings, read_only=True, alias=alias)
    else:
        con.execute(f"ATTACH {quote_path(settings.warehouse_path)} AS {quote_configured_name(alias)} (READ_ONLY)")


def _empty_warehouse(config: dict) -> duckdb.DuckDBPyConnection:
    """Nothing written yet: an empty warehouse in memory, for readers."""
    con = duckdb.connect(config=config)
    con.execute(_SCHEMA)
    return con


def rewrite_if_owed(settings) -> dict | None:
    """The rewrite nightly.data_rights left owed (audit.rewrite_due), once nothing it waited for remains:
    activation has taken the erased people off every destination, so the rows it deleted from
    activation.destination_members were the last of them. Until then a later night's activation retries."""
    with warehouse(settings) as con:
        due = con.execute("SELECT count(*) FROM audit.rewrite_due").fetchone()[0] and not erased_people_still_on_destinations(con)
        if due:
            con.execute("DELETE FROM audit.rewrite_due")
    return rewrite_warehouse(settings) if due else None


# the suppression keys of every erased profile (for good): compared with audit.suppression_key(profile_id)
ERASED_PROFILE_KEYS = "SELECT suppression_key FROM audit.erasure_suppressions WHERE identifier_kind = 'profile_id'"


def erased_people_still_on_destinations(con) -> int:
    return con.execute(f"""SELECT count(*) FROM activation.destination_members
                           WHERE audit.suppression_key(profile_id) IN ({ERASED_PROFILE_KEYS})""").fetchone()[0]


def rewrite_warehouse(settings) -> dict:
    """Copy the warehouse into a fresh file and swap it in, so no freed block keeps deleted rows.

    DuckDB's DELETE (and CREATE OR REPLACE, DROP) only marks rows or blocks free: their bytes stay
    in the file until reused, so an erased person's email or ids could be read from it. COPY FROM
    DATABASE writes only the live rows (with sequences, constraints, views and macros) into a new
    file; after a checkpoint it is the whole state and replaces the old file atomically. Readers
    already open keep the old snapshot; the pool keeps writers out meanwhile.

    It costs a full copy of the warehouse, so the nightly data-rights step calls it only after a
    night that deleted rows (retention, erasure, answered requests). The marts file and the
    published copy need none: dbt builds the marts into a fresh file every night
    (transform.build_models) and publishing copies that file.

    On the lake the same end is lake.purge_deleted_rows: the files holding deleted rows rewritten,
    older snapshots expired, unused files deleted, the catalog's bounds and free pages scrubbed."""
    if settings.warehouse_kind == "lake":
        return _purge_lake(settings)
    path = settings.warehouse_path
    if not path.exists():
        return {"rewritten": False}
    fresh = path.with_name(path.name + ".rewriting")
    for stale in (fresh, Path(f"{fresh}.wal")):
        stale.unlink(missing_ok=True)
    started, before = time.perf_counter(), path.stat().st_size
    with duckdb.connect(config=settings.duckdb_config(path.parent / "tmp")) as con:
        # the old file under its own catalog name and the marts as `marts`, so the views bind as they were written
        catalog = quote_configured_name(path.stem)
        con.execute(f"ATTACH {quote_path(path)} AS {catalog} (READ_ONLY)")
        if settings.marts_path.exists():
            con.execute(f"ATTACH {quote_path(settings.marts_path)} AS marts (READ_ONLY)")
        con.execute(f"ATTACH {quote_path(fresh)} AS rewriting")
        con.execute(f"COPY FROM DATABASE {catalog} TO rewriting")
        con.execute("CHECKPOINT rewriting")
    os.replace(fresh, path)
    Path(f"{path}.wal").unlink(missing_ok=True)  # none after a clean close; an old one must not replay into the new file
    summary = {"rewritten": True, "seconds": round(time.perf_counter() - started, 2), "bytes_before": before,
               "bytes_after": path.stat().st_size}
    log.info("warehouse rewritten without freed blocks: %s", summary)
    return summary


def _purge_lake(settings) -> dict:
    started = time.perf_counter()
    with warehouse(settings) as con:
        lake.purge_deleted_rows(con)
    summary = {"rewritten": True, "seconds": round(time.perf_counter() - started, 2)}
    log.info("lake purged of deleted rows: %s", summary)
    return summary


def publish_agreements(con, agreements: dict[str, Agreement], outbox_bucket: str) -> None:
    """Mirror the agreements into raw.agreements / raw.agreement_attributes for the dbt models."""
    con.execute("DELETE FROM raw.agreements")
    con.execute("DELETE FROM raw.agreement_attributes")
    for a in agreements.values():
        dp = a.differential_privacy
        con.execute("INSERT INTO raw.agreements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [a.partner_id, a.agreement_id, a.valid_from, a.valid_to, a.hash_profile, a.default_country_code,
                     list(a.required_consents), a.retention_days, a.max_bad_row_share, a.min_group_size, a.outbox(outbox_bucket),
                     list(a.overlap_dimensions), dp and dp.epsilon_per_release, dp and dp.budget_per_period, dp and dp.period,
                     a.seed_set and a.seed_set.format, a.partner_id_only_rows, list(a.partner_person_id_usage_labels)])
        for name, attr in a.attributes.items():
            con.execute("INSERT INTO raw.agreement_attributes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [a.partner_id, name, attr.type, attr.allowed_values, attr.min, attr.max, list(attr.usage_labels),
                         attr.special_category, attr.description])


def publish_governance(con, governance: Governance, activation_bucket: str) -> None:
    """Mirror destinations and usage policies into raw.destinations / raw.usage_policies for the dbt models."""
    con.execute("DELETE FROM raw.destinations")
    con.execute("DELETE FROM raw.usage_policies")
    for destination_id, d in governance.destinations.items():
        con.execute("INSERT INTO raw.destinations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [destination_id, d.type, list(d.marketing_actions), d.hash_profile, d.default_country_code,
                     list(d.identifiers), d.export_uri(destination_id, activation_bucket) if d.type == "s3_file" else None,
                     d.format if d.type == "s3_file" else None, d.connection_id, d.partner_ids_of, d.min_audience_size])
    for p in governance.policies:
        con.execute("INSERT INTO raw.usage_policies VALUES (?, ?, ?, ?, ?)",
                    [p.id, p.description, list(p.marketing_actions), p.requires_label, p.denied_label])


def last_processing_keys(con, day: dt.date) -> dict[str, str]:
    """partner_id -> processing key of the last loaded or quarantined delivery of `day`."""
    rows = con.execute(
        """SELECT partner_id, arg_max(processing_key, rowid) FROM audit.drop_events
           WHERE drop_date = ? AND event IN ('loaded', 'quarantined') GROUP BY partner_id""", [day]).fetchall()
    return dict(rows)


def migrate_partner_tables(con) -> list[str]:
    """Once, on the first write to a warehouse from before raw.partner_records: each partner's own table
    (raw."<partner_id>__records", agreed columns only) copied into raw.partner_records, its attribute
    columns as (attribute, value) pairs, then dropped; in one transaction. Returns the tables migrated."""
    old = [t for (t,) in con.execute("""SELECT table_name FROM information_schema.tables WHERE table_schema = 'raw'
                                        AND table_name LIKE '%\\_\\_records' ESCAPE '\\' ORDER BY 1""").fetchall()]
    if not old:
        return []
    fixed = {*RECORD_COLUMNS, *(name for name, _ in PROVENANCE_COLUMNS)}
    con.execute("BEGIN TRANSACTION")
    try:
        for table in old:
            columns = [c for (c,) in con.execute("""SELECT column_name FROM information_schema.columns
                WHERE table_schema = 'raw' AND table_name = ? ORDER BY ordinal_position""", [table]).fetchall()]
            con.execute(f"""INSERT INTO raw.partner_records BY NAME
                SELECT {', '.join(quote_ident(c) for c in columns if c in fixed)},
                       {_attribute_pairs([c for c in columns if c not in fixed], "t")} AS attributes
                FROM raw.{quote_ident(table)} t""")
            con.execute(f"DROP TABLE raw.{quote_ident(table)}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    log.info("migrated %s into raw.partner_records", old)
    return old


def drop_taken_over_history(con) -> None:
    """audit.segment_size_history (which the run report used to append to) once the model
    segment_size_history has taken its rows over, on its first build."""
    tables = {tuple(r) for r in con.execute("""SELECT schema_name, table_name FROM duckdb_tables()
                                               WHERE database_name = current_database()""").fetchall()}
    if {("audit", "segment_size_history"), ("history", "segment_size_history")} <= tables:
        con.execute("DROP TABLE audit.segment_size_history")


# the fingerprint of what _declare declares: its SQL, the migrations' code and the lake's Parquet options
_DECLARATIONS = hashlib.sha256("\n".join([_SCHEMA, inspect.getsource(migrate_partner_tables), repr(lake.PARQUET_OPTIONS)])
                               .encode()).hexdigest()


def _attribute_pairs(attributes, alias: str) -> str:
    """SQL for a row's agreed attributes that have a value, as a list of {attribute, value}."""
    pairs = ", ".join(f"{{'attribute': '{a}', 'value': CAST({alias}.{quote_ident(a)} AS VARCHAR)}}" for a in attributes)
    return (f"list_filter([{pairs}], v -> v.value IS NOT NULL)" if attributes
            else "CAST([] AS STRUCT(attribute VARCHAR, value VARCHAR)[])")


def _audit(con, outcome: DropOutcome, event: str, **values) -> None:
    con.execute(
        """INSERT INTO audit.drop_events (recorded_at, run_id, partner_id, drop_date, delivery_id, processing_key,
               event, rows_received, rows_loaded, rows_quarantined, checksums, reasons, details)
           VALUES (now(), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [outcome.run_id, outcome.partner_id, outcome.drop_date, outcome.delivery_id,
         outcome.processing_key, event, values.get("rows_received"), values.get("rows_loaded"),
         values.get("rows_quarantined"), json.dumps(values.get("checksums")), json.dumps(values.get("reasons")),
         json.dumps(values.get("details"))])


CONFLICT_ATTEMPTS = 8  # a drop's commit, when it conflicts with another drop's (commit_outcome)


def commit_outcome(settings, outcome: DropOutcome, agreements: dict[str, Agreement]) -> DropOutcome:
    """One drop's outcome applied (publish_outcome) in a warehouse session of its own, by the task that
    ingested it: on the lake, any worker, beside the other drops' tasks. A commit that conflicts with
    another drop's (both replaced rows of one table) is run again from the start, after a random
    pause: DuckLake retries a commit only when nothing conflicts, and each drop replaces rows no
    other drop holds, so a later attempt, from the newer snapshot, goes through."""
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):  # the last attempt's conflict is raised
        try:
            with warehouse(settings, declare=False) as con:  # discover declared the tables
                publish_outcome(con, outcome, agreements)
            return outcome.but(committed=True, staging_path=None)
        except duckdb.TransactionException as exc:
            if "conflict" not in str(exc).lower() or attempt == CONFLICT_ATTEMPTS:
                raise
            pause = random.uniform(0, min(30.0, 0.5 * 2 ** attempt))
            log.info("%s: commit conflicted with another drop's (attempt %d), again in %.1f s", outcome.name, attempt, pause)
            time.sleep(pause)
    raise AssertionError("unreachable: the last attempt returns or raises")


def publish_outcome(con, outcome: DropOutcome, agreements: dict[str, Agreement]) -> None:
    """Apply one drop's outcome in one transaction; re-applying the same outcome is a no-op in effect.
    An outcome its ingest task committed (commit_outcome) is already applied."""
    if outcome.committed:
        return
    status = outcome.status
    if status == "incomplete":
        _audit(con, outcome, "incomplete", reasons=[{
            "code": "missing_success",
            "message": f"{outcome.prefix} has no _SUCCESS yet; it is picked up by the first run after the partner writes it."}])
        return
    if status == "staged":  # ATTACH cannot run inside a transaction
        con.execute(f"ATTACH {quote_path(Path(outcome.staging_path))} AS stage (READ_ONLY)")
    con.execute("BEGIN TRANSACTION")
    try:
        _audit(con, outcome, "seen", details={"objects": [list(o) for o in outcome.objects],
                                              "delivered_at": outcome.delivered_at})
        if status == "skipped":
            _audit(con, outcome, "skipped", details={"why": "this delivery was already processed under the same agreement and rules"})
        elif status == "quarantined":
            _audit(con, outcome, "quarantined", rows_received=outcome.rows_received, checksums=outcome.checksums,
                   reasons=list(outcome.problems), details={"report": outcome.quarantine_report})
        elif status == "staged":
            _load_staged(con, outcome, agreements[outcome.partner_id])
        else:
            raise ValueError(f"unknown drop status {status!r}")
        con.execute("COMMIT")
    except BaseException:
        _rollback(con)
        raise
    finally:
        if status == "staged":
            con.execute("DETACH stage")
    if status == "staged":
        shutil.rmtree(Path(outcome.staging_path).parent, ignore_errors=True)


def _rollback(con) -> None:
    """Roll back the open transaction; a COMMIT that failed (a lake's conflict) has ended it already."""
    try:
        con.execute("ROLLBACK")
    except duckdb.TransactionException as exc:
        if "no transaction is active" not in str(exc):
            raise


def _load_staged(con, outcome: DropOutcome, agreement: Agreement) -> None:
    _audit(con, outcome, "verified", rows_received=outcome.rows_received, checksums=outcome.checksums,
           details={"dropped_columns": list(outcome.dropped_columns), "absent_attributes": list(outcome.absent_attributes)})
    columns = ", ".join(quote_ident(c) for c in RECORD_COLUMNS)
    drop = [outcome.partner_id, outcome.drop_date, outcome.delivery_id]
    # a first delivery deletes nothing, and does not DELETE: on the lake, drops appending at once never conflict
    if con.execute("SELECT count(*) FROM raw.partner_records WHERE partner_id = ? AND drop_date = ?", drop[:2]).fetchone()[0]:
        con.execute("DELETE FROM raw.partner_records WHERE partner_id = ? AND drop_date = ?", drop[:2])
    con.execute(
            f"""INSERT INTO raw.partner_records ({columns}, attributes, partner_id, drop_date, delivery_id, delivered_at, source_file,
                                                 source_row, loaded_at, run_id)
                SELECT {columns}, {_attribute_pairs(agreement.attributes, "r")}, ?, ?, ?, ?, {StageFile.SOURCE_FILE},
                       {StageFile.SOURCE_ROW}, now(), ?
                FROM stage.{StageFile.RECORDS} r ANTI JOIN stage.{StageFile.ROW_FAILURES} f USING ({StageFile.ROW})""",
            [*drop, outcome.delivered_at, outcome.run_id])
    if con.execute("SELECT count(*) FROM raw.quarantined_rows WHERE partner_id = ? AND drop_date = ?", drop[:2]).fetchone()[0]:
        con.execute("DELETE FROM raw.quarantined_rows WHERE partner_id = ? AND drop_date = ?", drop[:2])
    con.execute(
            f"""INSERT INTO raw.quarantined_rows
                SELECT ?, ?, ?, r.{StageFile.SOURCE_FILE}, r.{StageFile.SOURCE_ROW}, r.partner_record_id, f.rules,
                       to_json(struct_pack({', '.join(f'{quote_ident(c)} := r.{quote_ident(c)}' for c in (*RECORD_COLUMNS, *agreement.attributes))})),
                       ?, now()
                FROM stage.{StageFile.RECORDS} r
                JOIN (SELECT {StageFile.ROW}, list(DISTINCT {StageFile.RULE} ORDER BY {StageFile.RULE}) AS rules
                      FROM stage.{StageFile.ROW_FAILURES} GROUP BY {StageFile.ROW}) f USING ({StageFile.ROW})
            ORDER BY r.{StageFile.ROW}""", [*drop, outcome.run_id])
    reasons = [{"code": "rows_quarantined", "rule": rule, "rows": n, "fix": outcome.fixes_by_rule[rule]}
               for rule, n in sorted(outcome.failures_by_rule.items())]
    if outcome.dropped_columns:
        reasons.append({"code": "extra_column", "columns": list(outcome.dropped_columns),
                        "message": "columns not in the agreement were dropped on ingest"})
    _audit(con, outcome, "loaded", rows_received=outcome.rows_received, rows_loaded=outcome.rows_valid,
           rows_quarantined=outcome.rows_quarantined, checksums=outcome.checksums, reasons=reasons,
           details={"validation_result": outcome.validation_result, "data_docs": outcome.data_docs})


def main(argv: list[str] | None = None) -> int:
    """`python -m partner_pipeline.warehouse init [--analyst-role ROLE]`: make the warehouse with every
    table the pipeline declares (as a first night would); on a lake with a PostgreSQL catalog, then let
    role ROLE read what analysts may (lake.grant_analysts). Idempotent: a deployment runs it on every start."""
    import argparse

    from partner_pipeline.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m partner_pipeline.warehouse", description=main.__doc__.splitlines()[0])
    parser.add_argument("command", choices=["init"])
    parser.add_argument("--analyst-role", help="the PostgreSQL role analysts log in as (the lake's team configuration)")
    args = parser.parse_args(argv)
    settings = load_settings()
    with warehouse(settings):
        pass  # the write session declares the tables
    where = (f"lake: catalog {settings.lake_catalog}, files in {settings.lake_data_path}" if settings.warehouse_kind == "lake"
             else f"file {settings.warehouse_path}")
    print(f"warehouse ready ({where})")
    if args.analyst_role:
        lake.grant_analysts(settings, args.analyst_role)
        print(f"role {args.analyst_role} reads the catalog, and of its statistics those of {lake.ANALYST_TABLES}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
