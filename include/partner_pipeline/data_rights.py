"""Data subjects' rights and retention: the one place that deletes what the pipeline holds about
people (raw rows, quarantined rows and objects, access exports, delivered activation files, copies
past their retention) and that writes the suppression list, the deletion log (audit.data_deletions),
partner notices, receipts and access exports.

dbt only reads: it resolves what retention and erasure take away and keeps it out of every model the
night it is resolved (the staging models stg_pipeline__erasure_request_keys, stg_pipeline__erased_rows).
This module reads the marts of models/marts/data_rights, built before it runs (the dbt exposure
`data_rights`): data_rights_erasure_keys, data_rights_deletions, access_request_subjects,
access_request_records. The nightly data-rights step (nightly.data_rights), after the build:
- load erasure and access requests from `s3://<first-party>/{erasure,access}_requests/<date>/*.csv`
  into raw tables (identifiers in clear only until the request is answered);
- apply_deletions: add the keys tonight's erasure requests resolved to to the suppression list
  (audit.erasure_suppressions, for good), delete what the models list (expired drops; rows of
  suppressed people in raw.partner_records, raw.quarantined_rows, raw.first_party_profiles: whatever a
  later load, re-run or backfill brought back is deleted again) and queue each partner's notice, in one
  transaction; a first-party snapshot is loaded without the profiles already suppressed
  (without_erased_profiles), so only the night of the request deletes their profile row;
- scrub_delivered_files: take the people whose erasure is answered tonight out of the files already
  delivered to s3_file destinations;
- complete_erasures: scrub the pipeline's quarantined copies of the person's rows and take them out of
  earlier access exports, write each partner's erasure notice to its outbox (spec: every partner whose
  data held them, and again whenever a partner sends them after being told), write a receipt per
  erasure request, then forget the requests' identifiers;
- answer_access_requests: export what we hold about each access request's subject as JSON (GDPR
  portability);
- expire_copies: delete the copies outside the warehouse past their declared retention (declared in
  retention.py, which deletes nothing).
Activation's confirmed remove files are deleted here too (delete_confirmed_removes; activation decides
which), and for seed sets (v2): the outbox seed folders a newer complete set superseded
(delete_superseded_seed_sets, called by seeds.py once it is written) and the issued seeds of the erased
or past retention (delete_issued_seeds, from the mart issued_seed_deletions). Every deletion and export
is recorded in the audit tables with counts, never identifiers.

An identifier is matched as the warehouse's SQL macros say (warehouse.DATA_RIGHTS_MACROS:
audit.normal_hash, audit.normal_person_id, audit.suppression_key), the one definition: what is read
outside the warehouse (files, objects) is normalized and keyed by those same macros (_keying).
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import gzip
import hashlib
import io
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import NamedTuple

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from partner_pipeline import retention
from partner_pipeline.agreements import Agreement
from partner_pipeline.governance import Governance
from partner_pipeline.storage import ensure_buckets, list_objects, list_prefixes
from partner_pipeline.warehouse import DATA_RIGHTS_MACROS, ERASED_PROFILE_KEYS

log = logging.getLogger(__name__)
REQUEST_KINDS = {"erasure": ("profile_id", "email", "email_sha256"), "access": ("profile_id", "email")}
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


# --- requests in ---------------------------------------------------------------------------

def _problem(kind: str, source: str, row: int, field: str, message: str, fix: str) -> str:
    return f"{kind} request {source} row {row} field '{field}': {message}. Fix: {fix}"


def load_requests(con, client, bucket: str, kind: str, day: dt.date) -> dict:
    """Load every `<kind>_requests/<date>/*.csv` dated on or before `day` whose requests are not
    answered yet. A bad row is rejected with a message naming file, row, field and fix (recorded
    in audit.data_subject_requests, identifiers left out); the others go on."""
    identifiers = REQUEST_KINDS[kind]
    table = f"raw.{kind}_requests"
    done = {r for (r,) in con.execute("SELECT request_id FROM audit.data_subject_requests WHERE request_type = ? AND status = 'done'",
                                      [kind]).fetchall()}
    loaded, problems = 0, []
    prefix = f"{kind}_requests/"
    for date in sorted(d for d in list_prefixes(client, bucket, prefix) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", d)):
        if dt.date.fromisoformat(date) > day:
            continue
        for obj in list_objects(client, bucket, f"{prefix}{date}/"):
            if not obj.key.endswith(".csv"):
                continue
            source = f"s3://{bucket}/{obj.key}"
            text = client.get_object(Bucket=bucket, Key=obj.key)["Body"].read().decode("utf-8-sig")
            reader = csv.DictReader(io.StringIO(text))
            header = reader.fieldnames or []
            if "request_id" not in header or "received_at" not in header or not set(identifiers) & set(header):
                problems.append(f"{kind} request file {source}: header {header} lacks request_id, received_at or one of "
                                f"{', '.join(identifiers)}. Fix: write the header the spec gives and re-deliver the file.")
                continue
            rows = []
            for number, row in enumerate(reader, start=2):
                row = {k: (v or "").strip() or None for k, v in row.items() if k}
                request_id = row.get("request_id")
                found = [f for f in identifiers if row.get(f)]
                problem = None
                if not request_id:
                    problem = _problem(kind, source, number, "request_id", "empty", "give every request its id")
                elif not found:
                    problem = _problem(kind, source, number, "/".join(identifiers), "no identifier of the person",
                                       f"fill one of {', '.join(identifiers)}")
                elif row.get("email_sha256") and not SHA256_HEX.fullmatch(row["email_sha256"]):
                    problem = _problem(kind, source, number, "email_sha256", "not 64 lowercase hex characters",
                                       "give the lowercase hex SHA-256 of the normalized email, or the email itself")
                elif row.get("email") and "@" not in row["email"]:
                    problem = _problem(kind, source, number, "email", "not an email address", "give the address as typed")
                else:
                    try:
                        dt.datetime.fromisoformat((row.get("received_at") or "").replace("Z", "+00:00"))
                    except ValueError:
                        problem = _problem(kind, source, number, "received_at", f"{row.get('received_at')!r} is not an ISO 8601 "
                                           "timestamp", "write it like 2026-11-21T09:30:00Z")
                if problem:
                    problems.append(problem)
                    _record(con, request_id or f"{obj.key}#{number}", kind, dt.date.fromisoformat(date), None, "rejected", 0,
                            {"problem": problem}, None)
                elif request_id not in done:
                    rows.append([request_id, row["received_at"], date, source, number, *(row.get(f) for f in identifiers)])
            con.execute(f"DELETE FROM {table} WHERE source_file = ?", [source])  # a re-run loads the file again, once
            if rows:
                con.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
            loaded += len(rows)
    for problem in problems:
        log.error(problem)
    return {"loaded": loaded, "rejected": problems}


def _record(con, request_id, kind, request_date, run_id, status, profiles, receipt, location) -> None:
    con.execute("DELETE FROM audit.data_subject_requests WHERE request_id = ? AND request_type = ? AND status <> 'done'",
                [request_id, kind])
    con.execute("INSERT INTO audit.data_subject_requests VALUES (?, ?, ?, ?, now(), ?, ?, ?, ?)",
                [request_id, kind, request_date, run_id, status, profiles, json.dumps(receipt, default=str), location])


# --- the warehouse: what the models resolved ------------------------------------------------

# where each partner row table keeps the person's raw identifiers
_PARTNER_TABLES = {
    "raw.partner_records": ("t.partner_person_id", "t.email_sha256"),
    "raw.quarantined_rows": ("t.record->>'partner_person_id'", "t.record->>'email_sha256'"),
}


def apply_deletions(con, run_id: str) -> dict:
    """After the build, in one transaction: the suppression keys tonight's erasure requests resolved to
    (marts.data_rights_erasure_keys) join the suppression list, and every raw row the models listed
    (marts.data_rights_deletions: expired drops, rows of suppressed people) is deleted, counted in
    audit.data_deletions; each partner whose rows were erased is owed a notice
    (audit.pending_erasure_notices). The models already left these rows out tonight."""
    counts: dict[str, int] = {}
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("""INSERT INTO audit.erasure_suppressions
                       SELECT found.*, now() FROM (SELECT DISTINCT request_id, identifier_kind, suppression_key
                                                   FROM marts.data_rights_erasure_keys) AS found
                       ANTI JOIN audit.erasure_suppressions USING (request_id, identifier_kind, suppression_key)""")
        con.execute("CREATE OR REPLACE TEMP TABLE data_rights_deletions AS SELECT * FROM marts.data_rights_deletions")
        for location, (person, email) in _PARTNER_TABLES.items():
            expired = f"""FROM {location} t SEMI JOIN (SELECT partner_id, drop_date FROM data_rights_deletions
                          WHERE reason = 'retention' AND location = '{location}') USING (partner_id, drop_date)"""
            con.execute(f"""INSERT INTO audit.data_deletions SELECT now(), ?, 'retention', NULL, '{location}', partner_id, drop_date,
                            count(*) {expired} GROUP BY ALL""", [run_id])
            con.execute(f"DELETE FROM {location} WHERE rowid IN (SELECT t.rowid {expired})")
            # the person id and email hash the partner's notice names, normalized (audit.normal_person_id / normal_hash)
            con.execute(f"""CREATE OR REPLACE TEMP TABLE erasure_hits AS
                            SELECT t.rowid AS rid, d.request_id, t.partner_id, t.drop_date,
                                   audit.normal_person_id({person}) AS person, audit.normal_hash({email}) AS email
                            FROM {location} t JOIN data_rights_deletions d USING (partner_id, drop_date, source_file, source_row)
                            WHERE d.reason = 'erasure' AND d.location = '{location}'""")
            con.execute(f"""INSERT INTO audit.data_deletions SELECT now(), ?, 'erasure', request_id, '{location}', partner_id, drop_date,
                            count(DISTINCT rid) FROM erasure_hits GROUP BY ALL""", [run_id])
            _queue_notices(con, con.execute("SELECT request_id, partner_id, person, email FROM erasure_hits").fetchall())
            con.execute(f"DELETE FROM {location} WHERE rowid IN (SELECT rid FROM erasure_hits)")
        con.execute("""CREATE OR REPLACE TEMP TABLE erasure_hits AS
                       SELECT t.rowid AS rid, d.request_id FROM raw.first_party_profiles t
                       JOIN data_rights_deletions d ON d.profile_key = audit.suppression_key(t.profile_id)
                       WHERE d.reason = 'erasure' AND d.location = 'raw.first_party_profiles'""")
        con.execute("""INSERT INTO audit.data_deletions SELECT now(), ?, 'erasure', request_id, 'raw.first_party_profiles', NULL, NULL,
                       count(DISTINCT rid) FROM erasure_hits GROUP BY ALL""", [run_id])
        con.execute("DELETE FROM raw.first_party_profiles WHERE rowid IN (SELECT rid FROM erasure_hits)")
        counts = dict(con.execute("""SELECT reason || ' ' || location, sum(rows) FROM audit.data_deletions
                                     WHERE run_id = ? AND position('/' IN location) = 0 GROUP BY 1""", [run_id]).fetchall())
        con.execute("DROP TABLE erasure_hits")
        con.execute("DROP TABLE data_rights_deletions")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return {k: int(v) for k, v in counts.items()}


def without_erased_profiles(snapshot_select: str) -> str:
    """SQL for the rows of a first-party snapshot (`snapshot_select`, with a profile_id column) but those
    of profiles on the suppression list: load_first_party loads a snapshot that still holds an erased
    person without them, so their identifiers are not written to the warehouse again each night for
    apply_deletions to delete (and log) again."""
    return f"""SELECT snapshot.* FROM ({snapshot_select}) AS snapshot
               ANTI JOIN ({ERASED_PROFILE_KEYS}) AS erased ON audit.suppression_key(snapshot.profile_id) = erased.suppression_key"""


def _queue_notices(con, hits) -> None:
    """What each partner must be told about its rows erased tonight: per (request, partner, person) the
    person id and email hash, normalized."""
    found: dict[tuple, str] = {}
    for request_id, partner_id, person, email in hits:
        key = (request_id, partner_id, person)
        found[key] = max(found.get(key) or "", email or "") or None
    rows = [[*key, email] for key, email in sorted(found.items(), key=str) if key[2] is not None or email is not None]
    if rows:
        con.executemany("""INSERT INTO audit.pending_erasure_notices SELECT ?, ?, ?, ?
                           EXCEPT SELECT * FROM audit.pending_erasure_notices""", rows)


# --- identifiers read outside the warehouse --------------------------------------------------

@functools.cache
def _keying() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the warehouse's own macros (warehouse.DATA_RIGHTS_MACROS, the one
    definition of how an identifier is normalized and keyed), for what is read outside the warehouse."""
    con = duckdb.connect()
    con.execute(f"CREATE SCHEMA audit; {DATA_RIGHTS_MACROS}")
    return con


@functools.lru_cache(maxsize=1 << 16)
def suppression_key(identifier: str) -> str:
    """The warehouse's audit.suppression_key, for an identifier read outside the warehouse: the list
    holds keys, never the identifiers."""
    return _keying().execute("SELECT audit.suppression_key(?)", [identifier]).fetchone()[0]


@functools.lru_cache(maxsize=1 << 16)
def _normal(macro: str, value: str) -> str | None:
    return _keying().execute(f"SELECT audit.{macro}(?)", [value]).fetchone()[0]


def normal_hash(value) -> str | None:
    """An email or phone hash as the warehouse's audit.normal_hash compares it (lowercased, trimmed;
    empty is absent): a malformed row (uppercase or padded hash) still names the person."""
    return None if value is None else _normal("normal_hash", str(value))


def normal_person_id(value) -> str | None:
    """A partner person id as the warehouse's audit.normal_person_id compares it (trimmed; empty is absent)."""
    return None if value is None else _normal("normal_person_id", str(value))


class Keyed(NamedTuple):
    """One row (a CSV record, a Parquet row, a JSON object) as erasure matches it."""
    person: str | None  # its partner person id, normalized
    email: str | None  # its email hash, normalized
    keys: dict[str, str]  # identifier kind -> the suppression key of the identifier it carries


_KEY_KINDS = ("email_sha256", "phone_sha256", "partner_person", "profile_id", "seed_id")
_BATCH = 50_000  # rows keyed per query
_KEYED_SQL = """
    SELECT audit.normal_person_id(person), audit.normal_hash(email),
           audit.suppression_key(audit.normal_hash(email)), audit.suppression_key(audit.normal_hash(phone)),
           audit.suppression_key(partner || ':' || audit.normal_person_id(person)), audit.suppression_key(profile_id),
           audit.suppression_key(audit.normal_person_id(seed))
    FROM (SELECT unnest(range(?)) AS position, unnest(?::VARCHAR[]) AS email, unnest(?::VARCHAR[]) AS phone,
                 unnest(?::VARCHAR[]) AS person, unnest(?::VARCHAR[]) AS partner, unnest(?::VARCHAR[]) AS profile_id,
                 unnest(?::VARCHAR[]) AS seed)
    ORDER BY position"""


def keyed(rows: list[dict], partner_id: str | None) -> list[Keyed]:
    """Each row's identifiers normalized and keyed by the warehouse's macros (one query per batch of
    rows): its email and phone hashes, its person id within its partner (a file's partner is its
    folder's, `partner_id`, whatever its columns say; else the row's partner_id), its profile id."""
    def text(value) -> str | None:
        return None if value is None else str(value)

    found: list[Keyed] = []
    for start in range(0, len(rows), _BATCH):
        batch = rows[start:start + _BATCH]
        columns = [[text(r.get("email_sha256")) for r in batch], [text(r.get("phone_sha256")) for r in batch],
                   [text(r.get("partner_person_id")) for r in batch],
                   [str(partner) if (partner := partner_id or r.get("partner_id")) else None for r in batch],
                   [text(r.get("profile_id")) for r in batch], [text(r.get("seed_id")) for r in batch]]
        for person, email, *keys in _keying().execute(_KEYED_SQL, [len(batch), *columns]).fetchall():
            found.append(Keyed(person, email, {kind: key for kind, key in zip(_KEY_KINDS, keys) if key is not None}))
    return found


Suppressed = dict[str, dict[str, set[str]]]  # identifier kind -> suppression key -> request ids


def _suppressed(con) -> Suppressed:
    found: Suppressed = {kind: {} for kind in _KEY_KINDS}
    for request_id, kind, key in con.execute(
            "SELECT request_id, identifier_kind, suppression_key FROM audit.erasure_suppressions").fetchall():
        found[kind].setdefault(key, set()).add(request_id)
    return found


def _requests_of(row: Keyed, suppressed: Suppressed) -> set[str]:
    """The erasure requests whose suppressed identifiers one row (or JSON object) carries."""
    return set().union(*(suppressed[kind].get(key, ()) for kind, key in row.keys.items()))


# --- objects: quarantined copies ---------------------------------------------------------

def _filter_csv(text: str, drop) -> tuple[int, list[dict], str]:
    """(records, dropped records, text without them) of a whole CSV text, parsed as CSV so a quoted
    field's newline stays inside its record; kept records keep their exact original text. `drop` is
    given the records (dicts) a batch at a time and says which to drop (a list of booleans)."""
    lines = io.StringIO(text, newline="").readlines()
    reader = csv.reader(iter(lines))
    header = next(reader, None)
    if header is None:
        return 0, [], text
    kept, dropped, total, start = ["".join(lines[:reader.line_num])], [], 0, reader.line_num
    batch: list[tuple[str, dict | None]] = []  # (record's text, record; None for a blank line, which is no record)

    def decide() -> None:
        records = [row for _, row in batch if row is not None]
        verdicts = iter(drop(records) if records else ())
        for record, row in batch:
            if row is not None and next(verdicts):
                dropped.append(row)
            else:
                kept.append(record)
        batch.clear()

    for values in reader:
        batch.append(("".join(lines[start:reader.line_num]), dict(zip(header, values)) if values else None))
        start = reader.line_num
        total += bool(values)
        if len(batch) == _BATCH:
            decide()
    decide()
    return total, dropped, "".join(kept)


def _scrub_file(path: Path, partner_id: str, suppressed: Suppressed) -> tuple[int, list[dict], bytes | None] | None:
    """(rows before, the suppressed people's rows, the file's new bytes or None if unchanged) of a drop's
    data file; None if the file cannot be read as what its name says it is."""
    def hits(rows: list[dict]) -> list[bool]:
        return [bool(_requests_of(row, suppressed)) for row in keyed(rows, partner_id)]

    try:
        if path.name.endswith(".parquet"):
            table = pq.read_table(path)  # a path argument, never SQL text
            rows = table.to_pylist()
            found = hits(rows)
            keep = [i for i, h in enumerate(found) if not h]
            dropped = [r for r, h in zip(rows, found) if h]
            if not dropped:
                return len(rows), [], None
            out = io.BytesIO()
            pq.write_table(table.take(keep), out)
            return len(rows), dropped, out.getvalue()
        raw = path.read_bytes()
        gz = path.name.endswith(".gz")
        text = (gzip.decompress(raw) if gz else raw).decode("utf-8")
        total, dropped, kept = _filter_csv(text, hits)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, pa.ArrowException):
        return None
    if not dropped:
        return total, [], None
    body = kept.encode("utf-8")
    return total, dropped, gzip.compress(body, mtime=0) if gz else body


def _pending_notices(con, partner_id: str, rows: list[Keyed], suppressed: Suppressed) -> None:
    """What the partner must be told about the rows of theirs we deleted (written to its outbox tonight)."""
    found = {}
    for row in rows:
        for request_id in _requests_of(row, suppressed):
            if row.person or row.email:
                found[(request_id, row.person)] = max(found.get((request_id, row.person)) or "", row.email or "") or None
    for (request_id, person), email in sorted(found.items(), key=str):
        con.execute("""INSERT INTO audit.pending_erasure_notices SELECT ?, ?, ?, ?
                       EXCEPT SELECT * FROM audit.pending_erasure_notices""", [request_id, partner_id, person, email])


def _log_deletion(con, run_id: str, change: dict, partner_id: str | None) -> None:
    for request_id in sorted(change["requests"]) or [None]:
        con.execute("INSERT INTO audit.data_deletions VALUES (now(), ?, 'erasure', ?, ?, ?, NULL, ?)",
                    [run_id, request_id, change["location"], partner_id, change["rows"]])


def scrub_quarantine(con, client, bucket: str, prefixes: list[str], run_id: str) -> list[dict]:
    """Remove suppressed people's rows from quarantined copies under `prefixes` (rewritten in place), of
    any partner, with an agreement or without; each such partner is owed a notice. A copy that cannot
    be read is deleted, as it cannot be shown to be free of them."""
    suppressed = _suppressed(con)
    if not any(suppressed.values()):
        return []
    changed = []
    with tempfile.TemporaryDirectory() as tmp:
        for prefix in prefixes:
            for obj in list(list_objects(client, bucket, prefix)):  # listed before any is rewritten or deleted
                name = obj.key.rsplit("/", 1)[-1]
                if not name.endswith((".csv", ".csv.gz", ".parquet")):
                    continue
                local = Path(tmp) / "copy" / name
                local.parent.mkdir(exist_ok=True)
                client.download_file(bucket, obj.key, str(local))
                partner_id = obj.key.split("/", 1)[0]
                result = _scrub_file(local, partner_id, suppressed)
                location = f"s3://{bucket}/{obj.key}"
                if result is None:
                    client.delete_object(Bucket=bucket, Key=obj.key)
                    change = {"location": location, "rows": None, "action": "deleted (unreadable)", "requests": set()}
                elif result[1]:
                    client.put_object(Bucket=bucket, Key=obj.key, Body=result[2])
                    theirs = keyed(result[1], partner_id)
                    requests = set().union(*(_requests_of(r, suppressed) for r in theirs))
                    change = {"location": location, "rows": len(result[1]), "action": "rows removed", "requests": requests}
                    _pending_notices(con, partner_id, theirs, suppressed)
                else:
                    continue
                _log_deletion(con, run_id, change, partner_id)
                changed.append(change)
    return changed


# --- objects: access exports ---------------------------------------------------------------

def _objects_in(document) -> list[dict]:
    """Every JSON object inside a document (an export's records, links, activation rows, ...)."""
    if isinstance(document, dict):
        return [document, *(o for v in document.values() for o in _objects_in(v))]
    if isinstance(document, list):
        return [o for v in document for o in _objects_in(v)]
    return []


def scrub_access_exports(con, client, bucket: str, run_id: str) -> list[dict]:
    """Take erased people out of the access exports (access_exports/<date>/<request_id>.json) written
    before their erasure: a subject is theirs if any identifier in it is on the suppression list (keys
    computed here, never stored). An export left with no subject is deleted, with the access request's
    row that named them (access_requests/, answered already)."""
    suppressed = _suppressed(con)
    if not any(suppressed.values()):
        return []
    changed, emptied = [], {}  # emptied: access request id -> the erasure requests that emptied its export
    for obj in list(list_objects(client, bucket, "access_exports/")):  # listed before any is deleted
        if not obj.key.endswith(".json"):
            continue
        location = f"s3://{bucket}/{obj.key}"
        try:
            document = json.loads(client.get_object(Bucket=bucket, Key=obj.key)["Body"].read())
            subjects = document["subjects"]
        except (ValueError, KeyError, TypeError):
            client.delete_object(Bucket=bucket, Key=obj.key)  # cannot be shown to be free of them
            changed.append({"location": location, "rows": None, "action": "deleted (unreadable)", "requests": set()})
            continue
        kept, requests, removed = [], set(), 0
        objects = [(number, o) for number, subject in enumerate(subjects) for o in _objects_in(subject)]
        found: dict[int, set[str]] = {}
        for (number, _), row in zip(objects, keyed([o for _, o in objects], None)):
            found.setdefault(number, set()).update(_requests_of(row, suppressed))
        for number, subject in enumerate(subjects):
            hits = found.get(number, set())
            if hits:
                requests |= hits
                removed += 1
            else:
                kept.append(subject)
        if not removed:
            continue
        if kept:
            client.put_object(Bucket=bucket, Key=obj.key,
                              Body=json.dumps({**document, "subjects": kept}, indent=2, default=str).encode())
            action = "subjects removed"
        else:
            client.delete_object(Bucket=bucket, Key=obj.key)
            emptied[document.get("request_id")] = requests
            action = "deleted"
        changed.append({"location": location, "rows": removed, "action": action, "requests": requests})
    if emptied:  # the request that named only erased people names them too
        for obj in list_objects(client, bucket, "access_requests/"):
            if not obj.key.endswith(".csv"):
                continue
            text = client.get_object(Bucket=bucket, Key=obj.key)["Body"].read().decode("utf-8-sig")
            total, dropped, kept_text = _filter_csv(text, lambda rows: [(row.get("request_id") or "").strip() in emptied for row in rows])
            if dropped:
                client.put_object(Bucket=bucket, Key=obj.key, Body=kept_text.encode())
                requests = set().union(*(emptied[(row.get("request_id") or "").strip()] for row in dropped))
                changed.append({"location": f"s3://{bucket}/{obj.key}", "rows": len(dropped), "action": "rows removed",
                                "requests": requests})
    for change in changed:
        _log_deletion(con, run_id, change, None)
    return changed


# --- objects: files delivered to s3_file destinations ----------------------------------------

def scrub_delivered_files(con, s3, governance: Governance, activation_bucket: str, run_id: str) -> list[dict]:
    """Rewrite the add (and full-refresh members) files still in every s3_file destination's folder
    without the rows of the people whose erasure is answered tonight, and their manifests to match.

    A row is theirs when the suppression key of its email or phone hash, or of its partner_person_id within
    the destination's partner (identifier kind partner_person) (audit.suppression_key(hash),
    audit.erasure_suppressions, which holds their hashes under every hash profile and country code
    in use) is listed for a request not yet done; files written after tonight never hold them (the
    audiences are built without them). Remove files are left whole: they carry the instruction to
    take the person off the list, and go once confirmed (delete_confirmed_removes).
    Logged in audit.data_deletions per file (rows removed, never the hashes)."""
    keys = [k for (k,) in con.execute(
        """SELECT DISTINCT suppression_key FROM audit.erasure_suppressions
           WHERE identifier_kind IN ('email_sha256', 'phone_sha256', 'partner_person')
             AND request_id NOT IN (SELECT request_id FROM audit.data_subject_requests
                                    WHERE request_type = 'erasure' AND status = 'done')""").fetchall()]
    if not keys:
        return []
    delivered = re.compile(r"(?P<folder>[^/]+/(?P<date>\d{4}-\d{2}-\d{2})/\d{6}/)(add|members)-\d{5}\.(csv|parquet)")
    scrubbed = []
    with duckdb.connect() as local, tempfile.TemporaryDirectory() as tmp:
        local.execute(f"CREATE SCHEMA audit; {DATA_RIGHTS_MACROS}")
        local.execute("CREATE TABLE erased AS SELECT unnest(?::VARCHAR[]) AS suppression_key", [keys])
        for destination_id, destination in sorted(governance.destinations.items()):
            if destination.type != "s3_file":
                continue
            bucket, _, prefix = destination.export_uri(destination_id, activation_bucket).removeprefix("s3://").partition("/")
            changed: dict[str, dict[str, tuple[int, str]]] = {}  # folder -> file name -> (rows removed, new sha256)
            for obj in list(list_objects(s3, bucket, prefix)):
                match = delivered.fullmatch(obj.key[len(prefix):])
                if not match:
                    continue
                name = obj.key.rsplit("/", 1)[-1]
                source, kept = Path(tmp) / f"in-{name}", Path(tmp) / name
                s3.download_file(bucket, obj.key, str(source))
                reader = "read_parquet(?)" if name.endswith(".parquet") else "read_csv(?, header = true, all_varchar = true)"
                local.execute(f"CREATE OR REPLACE TABLE delivered AS SELECT * FROM {reader}", [str(source)])
                present = {c for (c,) in local.execute("SELECT column_name FROM (DESCRIBE delivered)").fetchall()}
                # hashes as delivered; a partner person id keyed within the destination's partner, as the
                # suppression list keys it (the partner id is a validated snake_case name: safe to splice)
                columns = [c for c in ("email_sha256", "phone_sha256") if c in present]
                if "partner_person_id" in present and destination.partner_ids_of:
                    columns.append(f"'{destination.partner_ids_of}:' || audit.normal_person_id(partner_person_id)")
                erased = " OR ".join(f"coalesce(audit.suppression_key({c}) IN (SELECT suppression_key FROM erased), false)"
                                     for c in columns)
                removed = local.execute(f"SELECT count(*) FROM delivered WHERE {erased}").fetchone()[0] if columns else 0
                if not removed:
                    continue
                rest = local.sql(f"SELECT * FROM delivered WHERE NOT ({erased}) ORDER BY rowid")
                if name.endswith(".parquet"):
                    rest.write_parquet(str(kept))
                else:
                    rest.write_csv(str(kept), header=True)
                data = kept.read_bytes()
                s3.put_object(Bucket=bucket, Key=obj.key, Body=data)
                changed.setdefault(prefix + match["folder"], {})[name] = (removed, hashlib.sha256(data).hexdigest())
                con.execute("INSERT INTO audit.data_deletions VALUES (now(), ?, 'erasure', NULL, ?, NULL, ?, ?)",
                            [run_id, f"s3://{bucket}/{obj.key}", dt.date.fromisoformat(match["date"]), removed])
                scrubbed.append({"location": f"s3://{bucket}/{obj.key}", "rows": removed})
            for folder, files in changed.items():  # the manifest describes the files as they now are
                manifest = json.loads(s3.get_object(Bucket=bucket, Key=folder + "manifest.json")["Body"].read())
                for entry in manifest["files"]:
                    if entry["key"] in files:
                        removed, digest = files[entry["key"]]
                        entry.update(rows=entry["rows"] - removed, sha256=digest)
                        manifest["adds"] -= removed
                manifest["rows_removed_after_delivery_for_erasure"] = sum(r for r, _ in files.values()) + \
                    manifest.get("rows_removed_after_delivery_for_erasure", 0)
                s3.put_object(Bucket=bucket, Key=folder + "manifest.json", Body=json.dumps(manifest, indent=2).encode())
    return scrubbed


def delete_confirmed_removes(con, s3, bucket: str, files: list[tuple[str, dt.date]], run_id: str) -> int:
    """Delete an s3_file destination's remove files (key, export date) that activation found delivered and
    confirmed (activation.S3FileExport.drop_confirmed_removes decides which: they name people who must
    leave the list, the erased among them, so they are kept only until then), each logged in
    audit.data_deletions (reason 'delivered', one object)."""
    for key, day in files:
        s3.delete_object(Bucket=bucket, Key=key)
        con.execute("INSERT INTO audit.data_deletions VALUES (now(), ?, 'delivered', NULL, ?, NULL, ?, 1)",
                    [run_id, f"s3://{bucket}/{key}", day])
    return len(files)


# --- erasure: notices, receipts -------------------------------------------------------------

def complete_erasures(con, client, settings, agreements: dict[str, Agreement], day: dt.date, run_id: str) -> list[dict]:
    """For each erasure request resolved by tonight's build: scrubbed copies (quarantine, access exports),
    partner notices, a receipt. Without a new request, tonight's quarantined copies are still scrubbed and
    any partner whose data brought an erased person back is told again."""
    pending = con.execute("""SELECT DISTINCT request_id, request_date FROM raw.erasure_requests
                             WHERE request_id NOT IN (SELECT request_id FROM audit.data_subject_requests
                                                      WHERE request_type = 'erasure' AND status = 'done')
                             ORDER BY 1""").fetchall()
    quarantine_prefixes = [""] if pending else [f"{p}/{day}/" for p in list_prefixes(client, settings.quarantine_bucket, "")]
    objects = scrub_quarantine(con, client, settings.quarantine_bucket, quarantine_prefixes, run_id)
    exports = scrub_access_exports(con, client, settings.first_party_bucket, run_id) if pending else []
    notified = _write_notices(con, client, settings, agreements, day)
    con.execute("DELETE FROM audit.pending_erasure_notices")  # written (a re-run merges into the same file)
    if not pending:
        if notified:
            log.info("partners told again about erased people they sent: %s", notified)
        return []

    def of(request_id: str, changes: list[dict]) -> list[dict]:
        return [{k: v for k, v in c.items() if k != "requests"} for c in changes if request_id in c["requests"] or not c["requests"]]

    receipts = []
    for request_id, request_date in pending:
        tables = con.execute("""SELECT location, sum(rows) FROM audit.data_deletions
                                WHERE request_id = ? AND rows > 0 AND location NOT LIKE 's3://%'
                                GROUP BY 1 ORDER BY 1""", [request_id]).fetchall()
        profiles = con.execute("""SELECT count(*) FROM audit.erasure_suppressions
                                  WHERE request_id = ? AND identifier_kind = 'profile_id'""", [request_id]).fetchone()[0]
        destinations = con.execute("""SELECT DISTINCT destination_id, segment_name FROM activation.destination_members
                                      WHERE audit.suppression_key(profile_id) IN (SELECT suppression_key FROM audit.erasure_suppressions
                                                                                WHERE request_id = ? AND identifier_kind = 'profile_id')
                                      ORDER BY 1, 2""", [request_id]).fetchall()
        receipt = {
            "request_id": request_id, "request_date": str(request_date), "processed_on": day.isoformat(), "run_id": run_id,
            "identifiers_suppressed": con.execute("SELECT identifier_kind, count(*) FROM audit.erasure_suppressions WHERE request_id = ? "
                                                  "GROUP BY 1 ORDER BY 1", [request_id]).fetchall(),
            "rows_deleted": [{"table": t, "rows": int(n)} for t, n in tables],
            "rebuilt_without_them": ["staging.*", "intermediate.*", "marts.*",
                                     str(settings.published_path) if settings.warehouse_kind == "file" else "the lake's files and snapshots"],
            "objects_scrubbed": of(request_id, objects),
            "access_exports_scrubbed": of(request_id, exports),
            "partners_notified": notified.get(request_id, []),
            "destinations_sent_a_remove_tonight": [{"destination_id": d, "segment": s} for d, s in destinations],
        }
        key = f"erasure_receipts/{day}/{request_id}.json"
        client.put_object(Bucket=settings.first_party_bucket, Key=key, Body=json.dumps(receipt, indent=2, default=str).encode())
        _record(con, request_id, "erasure", request_date, run_id, "done", profiles, receipt, f"s3://{settings.first_party_bucket}/{key}")
        receipts.append(receipt)
    done = [r for r, _ in pending]
    con.execute("DELETE FROM raw.erasure_requests WHERE list_contains(?, request_id)", [done])
    log.info("erasure requests answered: %s", [r["request_id"] for r in receipts])
    return receipts


def _write_notices(con, client, settings, agreements: dict[str, Agreement], day: dt.date) -> dict[str, list[str]]:
    """Spec: s3://<outbox>/<partner_id>/erasure/<date>.csv (partner_person_id, email_sha256, request_id), one
    line per (person, request); a partner without an agreement gets the default outbox. A re-run merges into
    the date's file rather than losing earlier lines, and writes the same file again."""
    notified: dict[str, set[str]] = {}
    by_partner: dict[str, dict[tuple[str, str], str]] = {}

    def add(partner_id: str, person: str, email: str, request_id: str) -> None:
        lines = by_partner.setdefault(partner_id, {})
        lines[(person, request_id)] = max(lines.get((person, request_id), ""), email)

    for request_id, partner_id, person, email_sha256 in con.execute(
            "SELECT request_id, partner_id, partner_person_id, email_sha256 FROM audit.pending_erasure_notices ORDER BY ALL").fetchall():
        add(partner_id, person or "", email_sha256 or "", request_id)
        notified.setdefault(request_id, set()).add(partner_id)
    for partner_id, lines in by_partner.items():
        agreement = agreements.get(partner_id)
        outbox = agreement.outbox(settings.outbox_bucket) if agreement else f"s3://{settings.outbox_bucket}/{partner_id}/"
        bucket, _, prefix = outbox.removeprefix("s3://").partition("/")
        ensure_buckets(client, [bucket])
        key = f"{prefix}erasure/{day}.csv"
        try:
            earlier = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            for row in csv.DictReader(io.StringIO(earlier)):
                add(partner_id, row["partner_person_id"], row["email_sha256"], row["request_id"])
        except client.exceptions.NoSuchKey:
            pass
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["partner_person_id", "email_sha256", "request_id"])
        writer.writerows(sorted((person, email, request_id) for (person, request_id), email in lines.items()))
        client.put_object(Bucket=bucket, Key=key, Body=out.getvalue().encode())
    return {r: sorted(p) for r, p in notified.items()}


# --- access and portability ----------------------------------------------------------------

def _rows(con, sql: str, params: list) -> list[dict]:
    cursor = con.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def answer_access_requests(con, client, settings, day: dt.date, run_id: str) -> list[dict]:
    """Everything we hold about each pending access request's subject, first party and per partner with
    provenance, as one JSON document in s3://<first-party>/access_exports/<date>/<request_id>.json. The
    subjects and their partner records are the marts access_request_subjects / access_request_records."""
    pending = con.execute("""SELECT DISTINCT request_id, request_date FROM raw.access_requests
                             WHERE request_id NOT IN (SELECT request_id FROM audit.data_subject_requests
                                                      WHERE request_type = 'access' AND status = 'done') ORDER BY 1""").fetchall()
    answered = []
    for request_id, request_date in pending:
        profile_ids = [p for (p,) in con.execute(
            "SELECT DISTINCT profile_id FROM marts.access_request_subjects WHERE request_id = ? ORDER BY 1",
            [request_id]).fetchall()]
        subjects = []
        for profile_id in profile_ids:
            by_partner: dict[str, dict] = {}
            for record in _rows(con, """SELECT * EXCLUDE (request_id) FROM marts.access_request_records
                                        WHERE request_id = ? AND profile_id = ?
                                        ORDER BY partner_id, drop_date, partner_record_id""", [request_id, profile_id]):
                by_partner.setdefault(record["partner_id"], {"records": [], "attributes": [], "links": []})["records"].append(record)
            for attribute in _rows(con, "SELECT * FROM marts.profile_partner_attributes WHERE profile_id = ? ORDER BY ALL", [profile_id]):
                by_partner.setdefault(attribute["partner_id"], {"records": [], "attributes": [], "links": []})["attributes"].append(attribute)
            for link in _rows(con, "SELECT * FROM marts.partner_person_links WHERE profile_id = ? ORDER BY ALL", [profile_id]):
                by_partner.setdefault(link["partner_id"], {"records": [], "attributes": [], "links": []})["links"].append(link)
            subjects.append({
                "profile_id": profile_id,
                "first_party": _rows(con, "SELECT * FROM raw.first_party_profiles WHERE profile_id = ?", [profile_id]),
                "partners": by_partner,
                "segments": _rows(con, "SELECT segment_name FROM marts.segment_membership WHERE profile_id = ? ORDER BY 1", [profile_id]),
                "activation": _rows(con, """SELECT destination_id, segment_name, email_sha256, phone_sha256, partner_person_id, synced_at
                                            FROM activation.destination_members WHERE profile_id = ? ORDER BY ALL""", [profile_id]),
            })
        document = {"request_id": request_id, "request_date": str(request_date), "generated_on": day.isoformat(),
                    "format": "partner-pipeline data subject export v1", "subjects": subjects}
        key = f"access_exports/{day}/{request_id}.json"
        client.put_object(Bucket=settings.first_party_bucket, Key=key,
                          Body=json.dumps(document, indent=2, default=str).encode())
        counts = {"profiles": len(subjects),
                  "partner_records": sum(len(p["records"]) for s in subjects for p in s["partners"].values()),
                  "partner_attributes": sum(len(p["attributes"]) for s in subjects for p in s["partners"].values()),
                  "segments": sum(len(s["segments"]) for s in subjects)}
        _record(con, request_id, "access", request_date, run_id, "done", len(subjects), counts,
                f"s3://{settings.first_party_bucket}/{key}")
        answered.append({"request_id": request_id, **counts, "location": f"s3://{settings.first_party_bucket}/{key}"})
    if pending:
        con.execute("DELETE FROM raw.access_requests WHERE list_contains(?, request_id)", [[r for r, _ in pending]])
    return answered


# --- copies past their declared retention -------------------------------------------------

def expire_copies(con, client, settings, agreements: dict[str, Agreement], governance: Governance, retention_date: dt.date,
                  run_id: str) -> list[dict]:
    """Delete every copy outside the warehouse past its declared retention (retention.RULES: where the
    copies live, what is one unit, how long each is kept) on `retention_date`; each unit is one row in
    audit.data_deletions (reason 'retention', its location, partner and date where known, the number of
    objects). Returns what was deleted."""
    deleted = []
    for rule in retention.RULES:
        for store, prefix, store_days in retention.places(rule, settings, agreements, governance):
            if rule.on_disk:
                root = Path(store)
                names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
            else:
                try:
                    names = [o.key[len(prefix):] for o in list_objects(client, store, prefix)]
                except client.exceptions.NoSuchBucket:
                    names = []  # nothing was ever written there
            for unit, (groups, members) in sorted(retention.units(names, rule).items()):
                day = dt.date.fromisoformat(groups["date"])
                expires_on = rule.expires_on(day, groups.get("partner"), store_days, agreements)
                if expires_on > retention_date:
                    continue
                if rule.on_disk:
                    for name in members:
                        (Path(store) / name).unlink(missing_ok=True)
                    location = str(Path(store) / unit)
                else:
                    for name in members:
                        client.delete_object(Bucket=store, Key=prefix + name)
                    location = f"s3://{store}/{prefix}{unit}"
                con.execute("INSERT INTO audit.data_deletions VALUES (now(), ?, 'retention', NULL, ?, ?, ?, ?)",
                            [run_id, location, groups.get("partner"), day, len(members)])
                deleted.append({"what": rule.what, "location": location, "objects": len(members), "expired_on": str(expires_on)})
        if rule.on_disk:
            _remove_empty_folders(Path(getattr(settings, rule.store.partition(":")[2])))
    if deleted:
        log.info("retention: deleted %d copies: %s", len(deleted), [d["location"] for d in deleted])
    return deleted


def _remove_empty_folders(root: Path) -> None:
    if root.is_dir():
        for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(folder.iterdir()):
                folder.rmdir()


# --- seed sets (v2): superseded sets in the outbox, issued seeds of the erased or expired ---------

def delete_superseded_seed_sets(con, client, bucket: str, seeds_prefix: str, partner_id: str, day: dt.date, run_id: str,
                                keep: set[str]) -> list[str]:
    """Once tonight's complete seed set is in `s3://<bucket>/<seeds_prefix><day>/`, every earlier date's
    folder is superseded (a seed set is always full): delete it, one audit.data_deletions row per folder
    (reason 'superseded', the number of objects). In tonight's folder, every object not named in `keep`
    (an earlier run's file in another format) goes too. Called by seeds.export_seed_sets right after the write."""
    deleted = []
    for date in sorted(list_prefixes(client, bucket, seeds_prefix)):
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date) or dt.date.fromisoformat(date) > day:
            continue
        folder = f"{seeds_prefix}{date}/"
        objects = [o for o in list_objects(client, bucket, folder)
                   if dt.date.fromisoformat(date) < day or o.key.removeprefix(folder) not in keep]
        if not objects:
            continue
        for obj in sorted(objects, key=lambda o: o.key.endswith("_SUCCESS"), reverse=True):  # _SUCCESS first: never a half set
            client.delete_object(Bucket=bucket, Key=obj.key)
        con.execute("INSERT INTO audit.data_deletions VALUES (now(), ?, 'superseded', NULL, ?, ?, ?, ?)",
                    [run_id, f"s3://{bucket}/{folder}", partner_id, dt.date.fromisoformat(date), len(objects)])
        deleted.append(f"s3://{bucket}/{folder}")
    return deleted


def delete_issued_seeds(con, run_id: str) -> dict:
    """Delete the issued seeds (raw.issued_seeds) that the mart issued_seed_deletions lists (an erased
    profile's, or past the agreement's retention), in one transaction, counted in audit.data_deletions
    per (reason, request, partner, last night sent): an erased person's seeds match nothing later."""
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE seed_deletions AS SELECT * FROM marts.issued_seed_deletions")
        con.execute("""INSERT INTO audit.data_deletions
                       SELECT now(), ?, reason, request_id, 'raw.issued_seeds', partner_id, last_issued_on, count(DISTINCT seed_id)
                       FROM seed_deletions GROUP BY ALL""", [run_id])
        counts = dict(con.execute("SELECT reason, count(DISTINCT (partner_id, agreement_id, seed_id)) FROM seed_deletions GROUP BY 1")
                      .fetchall())
        con.execute("""DELETE FROM raw.issued_seeds WHERE (partner_id, agreement_id, seed_id) IN
                       (SELECT (partner_id, agreement_id, seed_id) FROM seed_deletions)""")
        con.execute("DROP TABLE seed_deletions")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return {reason: int(n) for reason, n in counts.items()}
