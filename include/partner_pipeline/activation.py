"""Send each segment to its destinations: only the members added and removed since the last
successful sync, only where the usage policies allow it, every batch in the activation log.

What each destination holds is kept in activation.destination_members. An HTTP batch is applied
to it in the same transaction that logs its success, so a sync that fails halfway resumes with
the rest; a batch whose answer was lost, or applied in a transaction that a killed process never
committed (batches are committed together, BATCH_COMMIT_SECONDS apart), is re-sent under the same
Idempotency-Key (derived from the destination's state and the batch's content), which the
destination uses to ignore it. A
file export is one unit: its files, manifest and `_SUCCESS` are written, then the state moves;
a re-run rewrites the same keys with the same bytes.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import json
import logging
import random
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import duckdb
import httpx

from partner_pipeline import data_rights
from partner_pipeline.governance import Destination, Governance
from partner_pipeline.sqltext import quote_path
from partner_pipeline.storage import list_objects

log = logging.getLogger(__name__)
# a member as a destination holds it; partner_person_id only for a destination accepting that partner's ids
MEMBER_COLUMNS = ("profile_id", "email_sha256", "phone_sha256", "partner_person_id")


class ActivationFailed(RuntimeError):
    """Some segment could not be sent to some destination; the message names each and why."""


class DestinationRejected(RuntimeError):
    """The destination refused a batch with a 4xx other than 429: retrying would not help."""


class DestinationUnavailable(RuntimeError):
    """The destination kept failing (429/5xx/timeouts) through every attempt."""


@dataclass
class Run:
    run_id: str
    run_date: dt.date
    full_refresh: bool = False
    sleep: Callable[[float], None] = time.sleep
    results: list[dict] = field(default_factory=list)


def airflow_credentials(connection_id: str) -> tuple[str, str]:
    """(base URL, bearer token) of an Airflow connection: host is the base URL, password the token."""
    from airflow.sdk import Connection

    conn = Connection.get(connection_id)
    host = conn.host or ""
    if "://" not in host:
        host = f"{conn.schema or 'https'}://{host}" + (f":{conn.port}" if conn.port else "")
    if not conn.password:
        raise ActivationFailed(f"Airflow connection '{connection_id}' has no password; set the destination's bearer token there")
    return host.rstrip("/"), conn.password


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value.strip() else None
        if parsed is None:
            return None
        return max(0.0, parsed.timestamp() - (now if now is not None else time.time()))


def backoff_seconds(destination: Destination, attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, never shorter than the server's Retry-After."""
    ceiling = min(destination.backoff_max_seconds, destination.backoff_seconds * 2 ** (attempt - 1))
    return max(retry_after or 0.0, random.uniform(0, ceiling))


def idempotency_key(destination_id: str, segment: str, batches_applied: int, operation: str, members: list[tuple]) -> str:
    content = "\n".join("|".join(m or "" for m in member) for member in members)
    return hashlib.sha256(f"{destination_id}|{segment}|{batches_applied}|{operation}|{content}".encode()).hexdigest()


class ActivationLog:
    def __init__(self, con, run: Run, destination_id: str, segment: str):
        self.con, self.run, self.destination_id, self.segment = con, run, destination_id, segment

    def write(self, operation: str, batch_number: int | None, adds: int, removes: int, attempt: int | None, status: str,
              response_code: int | None = None, key: str | None = None, detail: str | None = None) -> None:
        self.write_rows([self.row(operation, batch_number, adds, removes, attempt, status, response_code, key, detail)])

    def row(self, operation: str, batch_number: int | None, adds: int, removes: int, attempt: int | None, status: str,
            response_code: int | None = None, key: str | None = None, detail: str | None = None) -> list:
        return [self.run.run_id, self.run.run_date, self.destination_id, self.segment, operation, batch_number, adds, removes,
                attempt, status, response_code, key, detail]

    def write_rows(self, rows: list[list]) -> None:
        """Append rows (of `row`) in one statement: on the lake, one data file however many."""
        values = ", ".join(["(now(), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(rows))
        self.con.execute(f"""INSERT INTO activation.activation_log (logged_at, run_id, run_date, destination_id, segment_name,
                                 operation, batch_number, adds, removes, attempt, status, response_code, idempotency_key, detail)
                             VALUES {values}""", [value for row in rows for value in row])


# --- state ---------------------------------------------------------------------------------

def _sync_state(con, destination_id: str, segment: str) -> tuple[int, str | None]:
    """The pair's batches applied so far and the run whose full refresh it last had."""
    return _batches_applied(con, destination_id, segment), _sync_row(con, destination_id, segment)


def _sync_row(con, destination_id: str, segment: str) -> str | None:
    """The pair's syncs row, made if missing; returns the run whose full refresh it last had."""
    row = con.execute("SELECT full_refresh_run_id FROM activation.syncs WHERE destination_id = ? AND segment_name = ?",
                      [destination_id, segment]).fetchone()
    if row is None:
        con.execute("INSERT INTO activation.syncs VALUES (?, ?, 0, NULL, NULL, NULL, NULL, 0)", [destination_id, segment])
    return row[0] if row else None


# A batch applied is a "sent" row of the activation log, written in the transaction that records what the
# destination then holds: the log is the one count of them (syncs.batches_applied is its copy as of the
# pair's last run, _record_run). So an HTTP batch commits two appends and no update: a DuckLake UPDATE
# (a delete file and a new data file) more than doubled each batch's commit (make bench).
_BATCHES_APPLIED = """(SELECT count(*) FROM activation.activation_log
                       WHERE destination_id = ? AND segment_name = ? AND status = 'sent')"""


def _batches_applied(con, destination_id: str, segment: str) -> int:
    return con.execute(f"SELECT {_BATCHES_APPLIED}", [destination_id, segment]).fetchone()[0]


def _wanted(withheld: bool) -> str:
    """What the destination should hold for the pair (parameters destination_id, segment_name): the
    audience, or nothing while it is withheld (a prospect audience below min_audience_size)."""
    return (f"SELECT {', '.join(MEMBER_COLUMNS)} FROM marts.activation_audiences WHERE destination_id = ? AND segment_name = ?"
            + (" AND false" if withheld else ""))


def _stage_diff(con, destination_id: str, segment: str, withheld: bool = False) -> tuple[int, int]:
    """The members to remove and to add into temp tables pending_removes / pending_adds, numbered
    1..n in a stable order (`position`), so a batch is a range of positions and is sent and applied
    straight from the table."""
    pair = [destination_id, segment]
    members = ", ".join(MEMBER_COLUMNS)
    held = f"SELECT {members} FROM activation.destination_members WHERE destination_id = ? AND segment_name = ?"
    wanted = _wanted(withheld)
    _number(con, "pending_removes", f"{held} EXCEPT {wanted}", pair + pair)
    _number(con, "pending_adds", f"{wanted} EXCEPT {held}", pair + pair)
    return (con.execute("SELECT count(*) FROM pending_removes").fetchone()[0],
            con.execute("SELECT count(*) FROM pending_adds").fetchone()[0])


def _number(con, table: str, query: str, parameters: list) -> None:
    members = ", ".join(MEMBER_COLUMNS)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE {table} AS
                    SELECT row_number() OVER (ORDER BY {members}) AS position, {members} FROM ({query})
                    ORDER BY position""", parameters)


def _batch(con, table: str, first: int, size: int) -> list[tuple]:
    return con.execute(f"SELECT {', '.join(MEMBER_COLUMNS)} FROM {table} WHERE position BETWEEN ? AND ? ORDER BY position",
                       [first, first + size - 1]).fetchall()


def _apply(con, destination_id: str, segment: str, operation: str, table: str, run: Run,
           positions: tuple[int, int] | None = None) -> None:
    """Record in the state that the destination now holds (add) or no longer holds (remove) the
    members of `table`, or of its `positions` range (first, last)."""
    source = f"(SELECT * FROM {table}{' WHERE position BETWEEN ? AND ?' if positions else ''})"
    where = list(positions or ())
    if operation == "add":
        members = ", ".join(MEMBER_COLUMNS)
        con.execute(f"""INSERT INTO activation.destination_members (destination_id, segment_name, {members}, synced_at, run_id)
                        SELECT ?, ?, {members}, now(), ? FROM {source}""",
                    [destination_id, segment, run.run_id, *where])
    else:
        same = " AND ".join(f"b.{c} IS NOT DISTINCT FROM d.{c}" for c in MEMBER_COLUMNS)
        con.execute(f"""DELETE FROM activation.destination_members d
                        WHERE destination_id = ? AND segment_name = ?
                          AND EXISTS (SELECT 1 FROM {source} b WHERE {same})""",
                    [destination_id, segment, *where])


def _mark_full_refresh(con, destination_id: str, segment: str, run: Run) -> None:
    """The pair's list was replaced by `run` (a retry of the run does not replace it again)."""
    con.execute("UPDATE activation.syncs SET full_refresh_run_id = ? WHERE destination_id = ? AND segment_name = ?",
                [run.run_id, destination_id, segment])


def _record_run(con, destination_id: str, segment: str, run: Run, synced: bool) -> None:
    """Which run last handled the pair, what the destination holds, and when it was last fully in sync."""
    _sync_row(con, destination_id, segment)
    con.execute(f"""UPDATE activation.syncs SET last_run_date = ?, last_run_id = ?,
                        members_held = (SELECT count(*) FROM activation.destination_members
                                        WHERE destination_id = ? AND segment_name = ?),
                        batches_applied = {_BATCHES_APPLIED}
                        {', last_synced_at = now()' if synced else ''}
                    WHERE destination_id = ? AND segment_name = ?""",
                [run.run_date, run.run_id, destination_id, segment, destination_id, segment, destination_id, segment])


# --- HTTP audience API -----------------------------------------------------------------------

class HttpAudience:
    def __init__(self, destination_id: str, destination: Destination, credentials: Callable[[str], tuple[str, str]]):
        self.destination_id, self.destination, self.credentials = destination_id, destination, credentials
        self._client: httpx.Client | None = None

    @property
    def client(self) -> httpx.Client:
        """Connected on first use: a night with nothing to send needs no connection."""
        if self._client is None:
            self.base_url, token = self.credentials(self.destination.connection_id)
            self._client = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=self.destination.timeout_seconds)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def request(self, method: str, path: str, key: str, body: dict | None, audit: Callable[..., None], run: Run) -> httpx.Response:
        """One call with retries: 429/5xx/timeouts/dropped connections back off and retry; other 4xx fail at once."""
        d = self.destination
        for attempt in range(1, d.max_attempts + 1):
            retry_after = None
            client = self.client
            try:
                response = client.request(method, self.base_url + path, json=body, headers={"Idempotency-Key": key})
            except httpx.TransportError as exc:  # timeouts, refused or dropped connections
                code, detail = None, f"{type(exc).__name__}: {exc}"
            else:
                code, detail = response.status_code, response.text[:2000]
                if code < 300:
                    return response
                if code != 429 and code < 500:
                    audit(attempt=attempt, status="rejected", response_code=code, detail=detail)
                    raise DestinationRejected(
                        f"{self.destination_id} answered {code} to {method} {path} (Idempotency-Key {key}): {detail}. "
                        f"This is not retried: fix the request or the destination's settings in include/governance/destinations.yaml.")
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if attempt == d.max_attempts:
                audit(attempt=attempt, status="failed", response_code=code, detail=detail)
                raise DestinationUnavailable(f"{self.destination_id}: {method} {path} failed {attempt} times, last: "
                                             f"{code or ''} {detail}. The next run (or a task retry) resumes from here.")
            if retry_after is not None and retry_after > d.backoff_max_seconds:
                audit(attempt=attempt, status="failed", response_code=code, detail=f"Retry-After {retry_after:.0f}s: {detail}")
                raise DestinationUnavailable(f"{self.destination_id} asks to retry after {retry_after:.0f}s, more than "
                                             f"backoff_max_seconds ({d.backoff_max_seconds:.0f}); the next run resumes from here.")
            delay = backoff_seconds(d, attempt, retry_after)
            audit(attempt=attempt, status="retrying", response_code=code, detail=f"retry in {delay:.2f}s: {detail}")
            run.sleep(delay)
        raise AssertionError("unreachable")

    def sync(self, con, segment: str, run: Run, withheld: bool = False) -> dict:
        log_ = ActivationLog(con, run, self.destination_id, segment)
        batches_applied, refreshed_by = _sync_state(con, self.destination_id, segment)
        path = f"/audiences/{segment}/members"
        cleared = False
        if run.full_refresh and refreshed_by != run.run_id:  # a retry of the same run does not clear again
            key = idempotency_key(self.destination_id, segment, batches_applied, "clear", [])
            self.request("DELETE", path, key, None, lambda **a: log_.write("clear", 0, 0, 0, key=key, **a), run)
            con.execute("BEGIN TRANSACTION")
            con.execute("DELETE FROM activation.destination_members WHERE destination_id = ? AND segment_name = ?",
                        [self.destination_id, segment])
            _mark_full_refresh(con, self.destination_id, segment, run)
            log_.write("clear", 0, 0, 0, attempt=None, status="sent", response_code=200, key=key)
            con.execute("COMMIT")
            batches_applied += 1
            cleared = True
        removes, adds = _stage_diff(con, self.destination_id, segment, withheld)
        size = self.destination.rows_per_batch
        batch_number = 0
        with _BatchCommits(con, self.destination_id, segment, run, log_) as commits:
            for operation, table, total in (("remove", "pending_removes", removes), ("add", "pending_adds", adds)):
                for first in range(1, total + 1, size):
                    members = _batch(con, table, first, size)
                    batch_number += 1
                    key = idempotency_key(self.destination_id, segment, batches_applied, operation, members)
                    counts = (len(members), 0) if operation == "add" else (0, len(members))
                    body = {"operation": operation, "hash_profile": self.destination.hash_profile,
                            "members": [{k: v for k, v in zip(MEMBER_COLUMNS[1:], m[1:]) if v is not None} for m in members]}

                    def audit(**attempt):  # a failed attempt is committed before the back-off or the raise
                        commits.commit([log_.row(operation, batch_number, *counts, key=key, **attempt)])  # noqa: B023 (called within this iteration)

                    response = self.request("POST", path, key, body, audit, run)
                    commits.applied(operation, table, (first, first + len(members) - 1),
                                    log_.row(operation, batch_number, *counts, attempt=None, status="sent",
                                             response_code=response.status_code, key=key))
                    batches_applied += 1
        return {"adds": adds, "removes": removes, "batches": batch_number, "full_refresh": cleared}


# Applied batches wait this long at most for their commit, and are written then: the members of each
# operation's batches (a range of positions) with one statement, their log rows with another. A batch
# written and committed alone cost more than its request on the lake (a catalog commit and two small
# Parquet files, ~21 ms a batch at 10M, make bench). A batch sent but not committed when the process dies is
# sent again on resume with the same Idempotency-Key (the count of committed batches and the remaining
# diff, hence the batch's content, are those it was sent with), so the destination ignores it.
BATCH_COMMIT_SECONDS = 1.0


class _BatchCommits:
    """The batches the destination applied since the last commit, written and committed every
    BATCH_COMMIT_SECONDS, when a failed attempt is logged, and at the end, also when the sync fails
    (unless writing them failed: activate then rolls back, and they are re-sent)."""

    def __init__(self, con, destination_id: str, segment: str, run: Run, log_: ActivationLog):
        self.con, self.destination_id, self.segment, self.run, self.log = con, destination_id, segment, run, log_
        self.ranges: dict[tuple[str, str], tuple[int, int]] = {}  # (operation, table) -> first and last position applied
        self.rows: list[list] = []
        self.writing = False

    def __enter__(self) -> _BatchCommits:
        self.since = time.monotonic()
        return self

    def applied(self, operation: str, table: str, positions: tuple[int, int], log_row: list) -> None:
        """The destination applied the batch `positions` of `table` (batches come in position order)."""
        first = self.ranges.get((operation, table), positions)[0]
        self.ranges[(operation, table)] = (first, positions[1])
        self.rows.append(log_row)
        if time.monotonic() - self.since >= BATCH_COMMIT_SECONDS:
            self.commit()

    def commit(self, log_rows: tuple[list, ...] | list[list] = ()) -> None:
        """Write the applied batches, then `log_rows`, in one transaction."""
        if not (self.ranges or self.rows or log_rows):
            return
        self.writing = True
        self.con.execute("BEGIN TRANSACTION")
        for (operation, table), positions in self.ranges.items():
            _apply(self.con, self.destination_id, self.segment, operation, table, self.run, positions)
        self.log.write_rows([*self.rows, *log_rows])  # every applied batch has its log row
        self.con.execute("COMMIT")
        self.writing = False
        self.ranges, self.rows, self.since = {}, [], time.monotonic()

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.writing:
            self.commit()


# --- file export to S3 -----------------------------------------------------------------------

class S3FileExport:
    """Customer-list files: `remove-NNNNN.<fmt>` and `add-NNNNN.<fmt>` (or `members-NNNNN` for a full refresh,
    which replaces the list), with columns email_sha256 / phone_sha256 under the destination's hash profile
    (those its identifiers list) and partner_person_id for a destination accepting a partner's ids,
    a manifest.json and `_SUCCESS` written last, under <uri><segment>/<run_date>/<sync number>/."""

    def __init__(self, destination_id: str, destination: Destination, s3, activation_bucket: str):
        self.destination_id, self.destination, self.s3 = destination_id, destination, s3
        uri = destination.export_uri(destination_id, activation_bucket).removeprefix("s3://")
        self.bucket, _, self.prefix = uri.partition("/")

    def close(self) -> None:
        pass

    def sync(self, con, segment: str, run: Run, withheld: bool = False) -> dict:
        log_ = ActivationLog(con, run, self.destination_id, segment)
        batches_applied, refreshed_by = _sync_state(con, self.destination_id, segment)
        full = run.full_refresh and refreshed_by != run.run_id
        if full:  # the export replaces the whole list: everything the audience should hold is "added"
            member_columns = ", ".join(MEMBER_COLUMNS)
            _number(con, "pending_removes", f"SELECT {member_columns} FROM activation.destination_members WHERE false", [])
            _number(con, "pending_adds", _wanted(withheld), [self.destination_id, segment])
            removes, adds = 0, con.execute("SELECT count(*) FROM pending_adds").fetchone()[0]
        else:
            removes, adds = _stage_diff(con, self.destination_id, segment, withheld)
        if not full and removes == adds == 0:
            self.drop_confirmed_removes(con, segment, run)
            return {"adds": 0, "removes": 0, "batches": 0, "full_refresh": False}
        prefix = f"{self.prefix}{segment}/{run.run_date.isoformat()}/{batches_applied + 1:06d}/"
        columns = [f"{c}_sha256" for c in self.destination.hashed_identifiers]
        columns += ["partner_person_id"] if self.destination.partner_ids_of else []
        fmt = self.destination.format
        files = []
        with tempfile.TemporaryDirectory() as tmp:
            for operation, table, total in (("remove", "pending_removes", removes), ("add", "pending_adds", adds)):
                name = "members" if full else operation
                size = self.destination.rows_per_batch
                for number, first in enumerate(range(1, total + 1, size), start=1):
                    local = Path(tmp) / f"{name}-{number:05d}.{fmt}"
                    con.execute(f"""COPY (SELECT {', '.join(columns)} FROM {table} WHERE position BETWEEN {first} AND {first + size - 1}
                                    ORDER BY position) TO {quote_path(local)} ({'FORMAT csv, HEADER true' if fmt == 'csv' else 'FORMAT parquet'})""")
                    data = local.read_bytes()
                    rows = min(size, total - first + 1)
                    self.s3.put_object(Bucket=self.bucket, Key=prefix + local.name, Body=data)
                    files.append({"key": local.name, "operation": "add" if full else operation, "rows": rows,
                                  "sha256": hashlib.sha256(data).hexdigest()})
        manifest = {"destination_id": self.destination_id, "audience": segment, "run_date": run.run_date.isoformat(),
                    "mode": "replace" if full else "delta", "hash_profile": self.destination.hash_profile,
                    **({"partner_person_id_of": self.destination.partner_ids_of} if self.destination.partner_ids_of else {}),
                    "columns": columns, "format": fmt, "adds": adds, "removes": removes, "files": files}
        self.s3.put_object(Bucket=self.bucket, Key=prefix + "manifest.json", Body=json.dumps(manifest, indent=2).encode())
        self.s3.put_object(Bucket=self.bucket, Key=prefix + "_SUCCESS", Body=b"")
        con.execute("BEGIN TRANSACTION")
        if full:
            con.execute("DELETE FROM activation.destination_members WHERE destination_id = ? AND segment_name = ?",
                        [self.destination_id, segment])
        _apply(con, self.destination_id, segment, "remove", "pending_removes", run)
        _apply(con, self.destination_id, segment, "add", "pending_adds", run)
        if full:
            _mark_full_refresh(con, self.destination_id, segment, run)
        log_.write("replace" if full else "delta", 1, adds, removes, attempt=1, status="sent",
                   detail=f"s3://{self.bucket}/{prefix}")
        con.execute("COMMIT")
        self.drop_confirmed_removes(con, segment, run)
        return {"adds": adds, "removes": removes, "batches": len(files), "full_refresh": full, "export": f"s3://{self.bucket}/{prefix}"}

    def drop_confirmed_removes(self, con, segment: str, run: Run) -> int:
        """Delete the remove files of earlier nights for this segment, once this sync completed.

        A remove file names people who must leave the list (the erased among them), so it is kept
        only until delivered and confirmed. Delivered: its export's `_SUCCESS` is written. Confirmed:
        a later night's sync of the same destination and segment completed (this one, with or
        without new files): the destination imports nightly, so it has had a whole cycle to take
        the file, and a later delta builds on it. Add files stay for the destination's
        file_retention_days (retention.py), scrubbed of erased people (data_rights.scrub_delivered_files).
        Which files are confirmed is the sync protocol's, decided here; data_rights deletes them and logs each."""
        base = f"{self.prefix}{segment}/"
        done = re.compile(r"(\d{4}-\d{2}-\d{2})/\d{6}/remove-\d{5}\.(csv|parquet)")
        confirmed = []
        for obj in list_objects(self.s3, self.bucket, base):
            match = done.fullmatch(obj.key[len(base):])
            if match and dt.date.fromisoformat(match.group(1)) < run.run_date:
                confirmed.append((obj.key, dt.date.fromisoformat(match.group(1))))
        return data_rights.delete_confirmed_removes(con, self.s3, self.bucket, confirmed, run.run_id)


# --- the whole activation ------------------------------------------------------------------

def declared_pairs(con) -> set[tuple[str, str]]:
    """Every (destination, segment) a segment lists in its destinations (models/marts/_segments.yml)."""
    return {tuple(r) for r in con.execute("""SELECT listed.destination_id, segment_name FROM marts.segments
                                             CROSS JOIN unnest(destinations) AS listed(destination_id)""").fetchall()}


def pairs_to_sync(con, governance: Governance, declared: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """The declared pairs, plus any a destination still holds members for (a segment dropped from a
    destination is emptied there); only destinations still configured."""
    held = {tuple(r) for r in con.execute("SELECT DISTINCT destination_id, segment_name FROM activation.destination_members").fetchall()}
    return sorted(pair for pair in declared | held if pair[0] in governance.destinations)


def policy_violations(con, destination_id: str, segment: str) -> list[str]:
    """The send-time re-check: the policy view, over the agreements and governance files as they are now.
    The columns each rule reads are the same parser derivation (int_segment_reads) that gave segment_membership its
    columns, and a refused rule is a row with no destination, so it blocks every destination."""
    return [m for (m,) in con.execute(
        """SELECT message FROM marts.segment_policy_violations
           WHERE segment_name = ? AND (destination_id = ? OR destination_id IS NULL) ORDER BY message""",
        [segment, destination_id]).fetchall()]


def below_min_audience_size(con, destination_id: str, destination: Destination, segment: str) -> str | None:
    """Why a prospect audience is withheld from the destination (nothing of it sent, what it holds
    removed), or None: it has fewer members than the destination's min_audience_size."""
    kind = con.execute("SELECT segment_kind FROM marts.segments WHERE segment_name = ?", [segment]).fetchone()
    if not kind or kind[0] != "prospect":
        return None
    size = con.execute("SELECT count(*) FROM marts.activation_audiences WHERE destination_id = ? AND segment_name = ?",
                       [destination_id, segment]).fetchone()[0]
    if size >= destination.min_audience_size:
        return None
    return (f"prospect audience {segment} has {size} members for {destination_id}, fewer than its min_audience_size "
            f"{destination.min_audience_size} (include/governance/destinations.yaml): nothing of it is sent")


def destination_violations(con, destination_id: str) -> list[str]:
    """The send-time re-check of a destination taking a partner's ids (destination_policy_violations):
    any row refuses the whole destination, every segment."""
    return [m for (m,) in con.execute(
        "SELECT message FROM marts.destination_policy_violations WHERE destination_id = ? ORDER BY message",
        [destination_id]).fetchall()]


def activate(con, governance: Governance, run: Run, s3, activation_bucket: str,
             credentials: Callable[[str], tuple[str, str]] = airflow_credentials) -> list[dict]:
    """Sync every pair; a failing pair does not stop the others. Raises ActivationFailed at the end naming each failure."""
    failures = []
    declared = declared_pairs(con)
    senders = {}
    try:
        for destination_id, segment in pairs_to_sync(con, governance, declared):
            destination = governance.destinations[destination_id]
            result = {"destination_id": destination_id, "segment": segment}
            blocked = policy_violations(con, destination_id, segment) if (destination_id, segment) in declared else []
            blocked += destination_violations(con, destination_id)
            profiles = {p for (p,) in con.execute("SELECT DISTINCT hash_profile FROM marts.activation_audiences WHERE destination_id = ?",
                                                  [destination_id]).fetchall()}
            if profiles - {destination.hash_profile}:
                blocked.append(f"destination {destination_id} now expects hash profile {destination.hash_profile} but the "
                               f"audiences were built under {sorted(profiles)}; re-run the date to rebuild them")
            if blocked:
                ActivationLog(con, run, destination_id, segment).write("check", None, 0, 0, None, "blocked", detail="\n".join(blocked))
                _record_run(con, destination_id, segment, run, synced=False)
                failures.append(f"{segment} -> {destination_id}: blocked, nothing sent:\n    " + "\n    ".join(blocked))
                run.results.append({**result, "status": "blocked"})
                continue
            withheld = below_min_audience_size(con, destination_id, destination, segment)
            if withheld:
                ActivationLog(con, run, destination_id, segment).write("check", None, 0, 0, None, "withheld", detail=withheld)
                log.warning("%s -> %s: %s", segment, destination_id, withheld)
            try:
                if destination_id not in senders:
                    senders[destination_id] = (HttpAudience(destination_id, destination, credentials)
                                               if destination.type == "http_audience"
                                               else S3FileExport(destination_id, destination, s3, activation_bucket))
                outcome = senders[destination_id].sync(con, segment, run, withheld=bool(withheld))
            except Exception as exc:  # noqa: BLE001 - one destination's failure must not stop the others
                try:
                    con.execute("ROLLBACK")  # a transaction interrupted: a full refresh's clear, or applied batches' (_BatchCommits)
                except duckdb.TransactionException:
                    pass  # none was open
                _record_run(con, destination_id, segment, run, synced=False)
                failures.append(f"{segment} -> {destination_id}: {exc}")
                run.results.append({**result, "status": "failed", "error": str(exc)})
                log.error("%s -> %s failed: %s", segment, destination_id, exc)
                continue
            _record_run(con, destination_id, segment, run, synced=True)
            run.results.append({**result, "status": "withheld" if withheld else "synced", **outcome})
            log.info("%s -> %s: %s", segment, destination_id, outcome)
    finally:
        for sender in senders.values():
            sender.close()
    if failures:
        raise ActivationFailed("activation incomplete; what was sent is recorded, a re-run sends only the rest:\n  "
                               + "\n  ".join(failures))
    return run.results
