"""Data subjects' requests and retention outside the tables: what dbt cannot do.

The deletions in the warehouse live in dbt (macros/data_rights.sql, run at the start of every
build). This module does the rest:
- load erasure and access requests from `s3://<first-party>/{erasure,access}_requests/<date>/*.csv`
  into raw tables (identifiers in clear only until the request is answered);
- after the build: write each partner's erasure notice to its outbox (spec), scrub the
  pipeline's quarantined copies of the person's rows, delete quarantined copies past retention,
  write a receipt per erasure request, export what we hold about each access request's subject
  as JSON (GDPR portability), then forget the requests' identifiers.
Every deletion and export is recorded in the audit tables with counts, never identifiers.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import logging
import re
import tempfile
from pathlib import Path

import duckdb

from partner_pipeline.agreements import Agreement
from partner_pipeline.storage import ensure_buckets, list_objects, list_prefixes

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


# --- objects: quarantined copies ---------------------------------------------------------

def suppression_key(identifier: str) -> str:
    """As macros/data_rights.sql's suppression_key: the list holds keys, never the identifiers."""
    return hashlib.sha256(f"erasure:{identifier}".encode()).hexdigest()


def _suppressed(con) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {"email_sha256": set(), "phone_sha256": set(), "partner_person": set(), "profile_id": set()}
    for kind, key in con.execute("SELECT identifier_kind, suppression_key FROM audit.erasure_suppressions").fetchall():
        found[kind].add(key)
    return found


def _rows_to_keep(path: Path, partner_id: str, suppressed: dict[str, set[str]]) -> tuple[int, int, bytes] | None:
    """(rows before, rows after, rewritten bytes) of a data file without the suppressed people's rows;
    None if the file cannot be read as a drop's data file."""
    def hit(row: dict) -> bool:
        email, phone, person = row.get("email_sha256"), row.get("phone_sha256"), row.get("partner_person_id")
        return ((email is not None and suppression_key(email) in suppressed["email_sha256"])
                or (phone is not None and suppression_key(phone) in suppressed["phone_sha256"])
                or (person is not None and suppression_key(f"{partner_id}:{person}") in suppressed["partner_person"]))

    try:
        if path.name.endswith(".parquet"):
            with duckdb.connect() as con:
                table = con.execute(f"SELECT * FROM read_parquet('{path}')").fetch_arrow_table()
                rows = table.to_pylist()
                keep = [i for i, r in enumerate(rows) if not hit(r)]
                if len(keep) == len(rows):
                    return len(rows), len(rows), b""
                out = path.with_suffix(".kept.parquet")
                con.register("kept", table.take(keep))
                con.execute(f"COPY kept TO '{out}' (FORMAT parquet)")
                return len(rows), len(keep), out.read_bytes()
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if path.name.endswith(".gz") else raw).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError, duckdb.Error):
        return None
    lines = text.splitlines(keepends=True)
    if not lines:
        return 0, 0, b""
    header = next(csv.reader([lines[0]]))
    kept = [lines[0]]
    for line in lines[1:]:
        values = next(csv.reader([line]), [])
        if not hit(dict(zip(header, values))):
            kept.append(line)
    if len(kept) == len(lines):
        return len(lines) - 1, len(lines) - 1, b""
    body = "".join(kept).encode("utf-8")
    return len(lines) - 1, len(kept) - 1, gzip.compress(body, mtime=0) if path.name.endswith(".gz") else body


def scrub_quarantine(con, client, bucket: str, prefixes: list[str], run_id: str) -> list[dict]:
    """Remove suppressed people's rows from quarantined copies under `prefixes` (rewritten in place);
    a copy that cannot be read is deleted, as it cannot be shown to be free of them."""
    suppressed = _suppressed(con)
    if not any(suppressed.values()):
        return []
    changed = []
    with tempfile.TemporaryDirectory() as tmp:
        for prefix in prefixes:
            for obj in list_objects(client, bucket, prefix):
                name = obj.key.rsplit("/", 1)[-1]
                if not name.endswith((".csv", ".csv.gz", ".parquet")):
                    continue
                local = Path(tmp) / name
                client.download_file(bucket, obj.key, str(local))
                partner_id = obj.key.split("/", 1)[0]
                result = _rows_to_keep(local, partner_id, suppressed)
                location = f"s3://{bucket}/{obj.key}"
                if result is None:
                    client.delete_object(Bucket=bucket, Key=obj.key)
                    changed.append({"location": location, "rows": None, "action": "deleted (unreadable)"})
                elif result[0] != result[1]:
                    client.put_object(Bucket=bucket, Key=obj.key, Body=result[2])
                    changed.append({"location": location, "rows": result[0] - result[1], "action": "rows removed"})
    for change in changed:
        con.execute("INSERT INTO audit.data_deletions VALUES (now(), ?, 'erasure', NULL, ?, ?, NULL, ?)",
                    [run_id, change["location"], change["location"].split("/")[3], change["rows"]])
    return changed


# --- erasure: notices, receipts -------------------------------------------------------------

def complete_erasures(con, client, settings, agreements: dict[str, Agreement], day: dt.date, run_id: str) -> list[dict]:
    """For each erasure request resolved by tonight's build: partner notices, scrubbed copies, a receipt."""
    pending = con.execute("""SELECT DISTINCT request_id, request_date FROM raw.erasure_requests
                             WHERE request_id NOT IN (SELECT request_id FROM audit.data_subject_requests
                                                      WHERE request_type = 'erasure' AND status = 'done')
                             ORDER BY 1""").fetchall()
    quarantine_prefixes = [""] if pending else [f"{p}/{day}/" for p in list_prefixes(client, settings.quarantine_bucket, "")]
    objects = scrub_quarantine(con, client, settings.quarantine_bucket, quarantine_prefixes, run_id)
    if not pending:
        return []
    notified = _write_notices(con, client, settings, agreements, day)
    receipts = []
    for request_id, request_date in pending:
        tables = con.execute("""SELECT location, sum(rows) FROM audit.data_deletions WHERE request_id = ? AND rows > 0
                                GROUP BY 1 ORDER BY 1""", [request_id]).fetchall()
        profiles = con.execute("""SELECT count(*) FROM audit.erasure_suppressions
                                  WHERE request_id = ? AND identifier_kind = 'profile_id'""", [request_id]).fetchone()[0]
        destinations = con.execute("""SELECT DISTINCT destination_id, segment_name FROM activation.destination_members
                                      WHERE sha256('erasure:' || profile_id) IN (SELECT suppression_key FROM audit.erasure_suppressions
                                                                                WHERE request_id = ? AND identifier_kind = 'profile_id')
                                      ORDER BY 1, 2""", [request_id]).fetchall()
        receipt = {
            "request_id": request_id, "request_date": str(request_date), "processed_on": day.isoformat(), "run_id": run_id,
            "identifiers_suppressed": con.execute("SELECT identifier_kind, count(*) FROM audit.erasure_suppressions WHERE request_id = ? "
                                                  "GROUP BY 1 ORDER BY 1", [request_id]).fetchall(),
            "rows_deleted": [{"table": t, "rows": int(n)} for t, n in tables],
            "rebuilt_without_them": ["staging.*", "intermediate.*", "marts.*", str(settings.published_path)],
            "objects_scrubbed": objects,
            "partners_notified": notified.get(request_id, []),
            "destinations_sent_a_remove_tonight": [{"destination_id": d, "segment": s} for d, s in destinations],
        }
        key = f"erasure_receipts/{day}/{request_id}.json"
        client.put_object(Bucket=settings.first_party_bucket, Key=key, Body=json.dumps(receipt, indent=2, default=str).encode())
        _record(con, request_id, "erasure", request_date, run_id, "done", profiles, receipt, f"s3://{settings.first_party_bucket}/{key}")
        receipts.append(receipt)
    done = [r for r, _ in pending]
    con.execute("DELETE FROM raw.erasure_requests WHERE list_contains(?, request_id)", [done])
    con.execute("DELETE FROM audit.pending_erasure_notices WHERE list_contains(?, request_id)", [done])
    log.info("erasure requests answered: %s", [r["request_id"] for r in receipts])
    return receipts


def _write_notices(con, client, settings, agreements: dict[str, Agreement], day: dt.date) -> dict[str, list[str]]:
    """Spec: s3://<outbox>/<partner_id>/erasure/<date>.csv (partner_person_id, email_sha256, request_id); a
    re-run merges into the date's file rather than losing earlier lines."""
    notified: dict[str, list[str]] = {}
    by_partner: dict[str, list[tuple]] = {}
    for request_id, partner_id, person, email_sha256 in con.execute(
            "SELECT request_id, partner_id, partner_person_id, email_sha256 FROM audit.pending_erasure_notices ORDER BY ALL").fetchall():
        by_partner.setdefault(partner_id, []).append((person, email_sha256 or "", request_id))
        notified.setdefault(request_id, []).append(partner_id)
    for partner_id, lines in by_partner.items():
        agreement = agreements.get(partner_id)
        outbox = agreement.outbox(settings.outbox_bucket) if agreement else f"s3://{settings.outbox_bucket}/{partner_id}/"
        bucket, _, prefix = outbox.removeprefix("s3://").partition("/")
        ensure_buckets(client, [bucket])
        key = f"{prefix}erasure/{day}.csv"
        try:
            earlier = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            lines += [tuple(r) for r in list(csv.reader(io.StringIO(earlier)))[1:]]
        except client.exceptions.NoSuchKey:
            pass
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["partner_person_id", "email_sha256", "request_id"])
        writer.writerows(sorted(set(lines)))
        client.put_object(Bucket=bucket, Key=key, Body=out.getvalue().encode())
    return {r: sorted(set(p)) for r, p in notified.items()}


# --- access and portability ----------------------------------------------------------------

def _rows(con, sql: str, params: list) -> list[dict]:
    cursor = con.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def answer_access_requests(con, client, settings, day: dt.date, run_id: str) -> list[dict]:
    """Everything we hold about each pending access request's subject, first party and per partner with
    provenance, as one JSON document in s3://<first-party>/access_exports/<date>/<request_id>.json."""
    pending = con.execute("""SELECT DISTINCT request_id, request_date FROM raw.access_requests
                             WHERE request_id NOT IN (SELECT request_id FROM audit.data_subject_requests
                                                      WHERE request_type = 'access' AND status = 'done') ORDER BY 1""").fetchall()
    answered = []
    for request_id, request_date in pending:
        profile_ids = [p for (p,) in con.execute(
            "SELECT DISTINCT profile_id FROM intermediate.int_access_request_subjects WHERE request_id = ? ORDER BY 1",
            [request_id]).fetchall()]
        subjects = []
        for profile_id in profile_ids:
            by_partner: dict[str, dict] = {}
            for record in _rows(con, """SELECT * FROM intermediate.int_partner_records_matched WHERE profile_id = ?
                                        ORDER BY partner_id, drop_date, partner_record_id""", [profile_id]):
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
                "activation": _rows(con, """SELECT destination_id, segment_name, email_sha256, phone_sha256, synced_at
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
