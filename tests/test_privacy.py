"""Retention, erasure requests, consent withdrawal and access requests, on real files: every
night function as the DAG runs it, the real S3 server, the loopback audience API."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re

import duckdb
import pytest

from partner_pipeline import ingest
from partner_pipeline.agreements import load_agreements
from partner_pipeline.settings import load_settings
from partner_pipeline.sqltext import quote_ident
from partner_pipeline.transform import published_marts
from partner_pipeline.warehouse import warehouse
from partner_pipeline_dev import synth
from conftest import run_night as night

pytestmark = pytest.mark.slow

D = dt.date(2026, 11, 21)
HASH_PROFILES = ("canonical", "uid2", "basic", "google")




def query(sql, params=()):
    with warehouse(load_settings(), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def set_retention(agreements_dir, partner_id, days):
    path = agreements_dir / f"{partner_id}.yaml"
    path.write_text(re.sub(r"retention_days: \d+", f"retention_days: {days}", path.read_text()))


def test_retention_at_the_boundary_in_tables_quarantine_and_backfills(pipeline_env, agreements_dir, audience_api, s3_api, tmp_path):
    """Retention 2 days: on D, the drop of D-2 expires (drop_date + 2 days = D) and the drop of D-1
    (expiring D+1) stays; a backfill of D-1 afterwards does not bring D-2 back."""
    set_retention(agreements_dir, "acme_bank", 2)
    set_retention(agreements_dir, "globex_retail", 2)
    settings = load_settings()
    agreements = load_agreements(agreements_dir)
    root = tmp_path / "synth"
    expiring, staying = D - dt.timedelta(days=2), D - dt.timedelta(days=1)
    synth.generate_scenario(root, landing_bucket=settings.landing_bucket, first_party_bucket=settings.first_party_bucket,
                            agreements=agreements, drop_date=expiring, n_profiles=600,
                            rows_per_partner=300, seed=7, bad_row_share=0.05)
    # Globex's drop of that date is replaced by a corrupt one: its copy lands in quarantine
    synth.write_drop(root, settings.landing_bucket, synth.DropSpec(agreements["globex_retail"], expiring, rows=100,
                                                                    corruption="checksum_mismatch"), 7, 600, 8)
    synth.write_drop(root, settings.landing_bucket, synth.DropSpec(agreements["acme_bank"], staying, rows=200, bad_row_share=0.05),
                     7, 600, 9)
    synth.upload_tree(s3_api, root)
    night(expiring, "n1")
    night(staying, "n2")
    loaded = dict(query("SELECT drop_date, count(*) FROM raw.partner_records WHERE partner_id = 'acme_bank' GROUP BY 1"))
    quarantined = dict(query("SELECT drop_date, count(*) FROM raw.quarantined_rows GROUP BY 1"))
    assert set(loaded) == set(quarantined) == {expiring, staying}
    assert s3_api.list_objects_v2(Bucket=settings.quarantine_bucket, Prefix=f"globex_retail/{expiring}/")["KeyCount"] > 0

    night(D, "n3")
    assert dict(query("SELECT drop_date, count(*) FROM raw.partner_records WHERE partner_id = 'acme_bank' GROUP BY 1")) == {staying: loaded[staying]}
    assert dict(query("SELECT drop_date, count(*) FROM raw.quarantined_rows GROUP BY 1")) == {staying: quarantined[staying]}
    assert s3_api.list_objects_v2(Bucket=settings.quarantine_bucket, Prefix=f"globex_retail/{expiring}/")["KeyCount"] == 0
    for table in ("marts.profile_partner_attributes", "intermediate.int_partner_records_matched", "staging.stg_pipeline__partner_records"):
        assert query(f"SELECT count(*) FROM {table} WHERE drop_date = ?", [expiring]) == [(0,)], table
    assert query("SELECT count(*) FROM marts.profile_partner_attributes WHERE drop_date = ?", [staying])[0][0] > 0
    deleted = {(loc, day): n for loc, day, n in query(
        "SELECT location, drop_date, sum(rows) FROM audit.data_deletions WHERE reason = 'retention' GROUP BY ALL")}
    assert deleted[("raw.partner_records", expiring)] == loaded[expiring]  # Globex's drop of that date was quarantined whole
    assert deleted[("raw.quarantined_rows", expiring)] == quarantined[expiring]
    assert (f"s3://{settings.quarantine_bucket}/globex_retail/{expiring}/", expiring) in deleted

    # a backfill of D-1 counts retention from D, the latest date built: D-2 stays gone, D-1 stays
    night(staying, "backfill")
    assert dict(query("SELECT drop_date, count(*) FROM raw.partner_records WHERE partner_id = 'acme_bank' GROUP BY 1")) == {staying: loaded[staying]}
    with published_marts(settings) as con:
        assert con.execute("SELECT count(*) FROM profile_partner_attributes WHERE drop_date = ?", [expiring]).fetchone()[0] == 0


# --- erasure ----------------------------------------------------------------------------------

@pytest.fixture
def two_nights(pipeline_env, agreements_dir, audience_api, s3_api, tmp_path):
    """Drops on D-1 and D from both partners, the first run (D-1) done; returns what the tests need."""
    settings = load_settings()
    agreements = load_agreements(agreements_dir)
    root = tmp_path / "synth"
    synth.generate_scenario(root, landing_bucket=settings.landing_bucket, first_party_bucket=settings.first_party_bucket,
                            agreements=agreements, drop_date=D - dt.timedelta(days=1), n_profiles=800,
                            rows_per_partner=600, seed=21, bad_row_share=0.02)
    for partner_id, share in (("acme_bank", 0.5), ("globex_retail", 0.02)):  # acme's D drop is quarantined whole
        synth.write_drop(root, settings.landing_bucket, synth.DropSpec(agreements[partner_id], D, rows=500, bad_row_share=share),
                         21, 800, 22)
    synth.upload_tree(s3_api, root)
    night(D - dt.timedelta(days=1), "n1")
    return {"settings": settings, "root": root}


def someone_everywhere():
    """A profile linked by both partners, in a segment the HTTP destination holds."""
    return query("""
        SELECT m.profile_id FROM activation.destination_members m
        JOIN marts.partner_person_links a ON a.profile_id = m.profile_id AND a.partner_id = 'acme_bank'
        JOIN marts.partner_person_links g ON g.profile_id = m.profile_id AND g.partner_id = 'globex_retail'
        WHERE m.destination_id = 'personalization_api' ORDER BY 1 LIMIT 1""")[0][0]


def identifiers_of(profile_id: str) -> dict[str, set[str]]:
    """Every form under which the pipeline could hold the person: profile id, raw email, each hash
    profile's email and phone hashes, partner person ids."""
    email, phone = query("SELECT email, phone FROM raw.first_party_profiles WHERE profile_id = ?", [profile_id])[0]
    hashes = {h for row in query("SELECT email_sha256, phone_sha256 FROM intermediate.int_profile_identifiers WHERE profile_id = ?",
                                 [profile_id]) for h in row if h}
    persons = {p for (p,) in query("SELECT partner_person_id FROM marts.partner_person_links WHERE profile_id = ?", [profile_id])}
    persons |= {p for (p,) in query("""SELECT DISTINCT partner_person_id FROM intermediate.int_partner_records_matched
                                       WHERE profile_id = ?""", [profile_id])}
    assert email and hashes and persons
    return {"profile_id": {profile_id}, "email": {email, email.strip().lower()}, "hash": hashes, "partner_person_id": persons,
            "phone": {phone} if phone else set()}


def token(value: str) -> re.Pattern:
    return re.compile(rf"(?<![A-Za-z0-9_.+-]){re.escape(value)}(?![A-Za-z0-9_])")


def scan_warehouse(settings, identifiers) -> list[str]:
    """Every table the warehouse keeps (on the file: the warehouse, marts and published files; on the
    lake: its tables at the last commit), every value as text, searched for every identifier (views
    store nothing: the tables are what is kept)."""
    if settings.warehouse_kind == "lake":
        with warehouse(settings, read_only=True) as con:
            return scan_tables(con, "lake", identifiers)
    found = []
    for path in (settings.warehouse_path, settings.marts_path, settings.published_path):
        with duckdb.connect(str(path), read_only=True) as con:
            found += scan_tables(con, path.stem, identifiers, where=path.name)
    return found


def scan_tables(con, catalog, identifiers, where="") -> list[str]:
    patterns = [(kind, token(v)) for kind, values in identifiers.items() for v in values]
    found = []
    tables = con.execute("""SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ?""", [catalog]).fetchall()
    for schema, table in tables:
        columns = [c for (c,) in con.execute("""SELECT column_name FROM duckdb_columns()
                                                WHERE database_name = ? AND schema_name = ? AND table_name = ?""",
                                             [catalog, schema, table]).fetchall()]
        source = ".".join(quote_ident(part) for part in (catalog, schema, table))
        for column in columns:
            for (value,) in con.execute(f"SELECT DISTINCT CAST({quote_ident(column)} AS VARCHAR) FROM {source} "
                                        f"WHERE {quote_ident(column)} IS NOT NULL").fetchall():
                for kind, pattern in patterns:
                    if pattern.search(value):
                        found.append(f"{where or catalog}:{schema}.{table}.{column} holds the {kind}")
    return found


def scan_objects(s3_api, buckets, identifiers, skip=()) -> list[str]:
    import gzip

    patterns = [(kind, token(v)) for kind, values in identifiers.items() for v in values]
    found = []
    for bucket in buckets:
        for page in s3_api.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                if obj["Key"].startswith(skip):
                    continue
                body = s3_api.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                if obj["Key"].endswith(".gz"):
                    body = gzip.decompress(body)
                if obj["Key"].endswith(".parquet"):
                    continue  # the drops here are CSV; Parquet quarantine copies are covered in test_ingest
                text = body.decode("utf-8", "replace")
                found += [f"s3://{bucket}/{obj['Key']} holds the {kind}" for kind, p in patterns if p.search(text)]
    return found


def scan_files(directory, identifiers) -> list[str]:
    """The pipeline's local files beside the DuckDB files: validation results, Data Docs, dbt logs."""
    patterns = [(kind, token(v)) for kind, values in identifiers.items() for v in values]
    found = []
    for path in directory.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".html", ".log", ".csv", ".sql"):
            text = path.read_text("utf-8", "replace")
            found += [f"{path} holds the {kind}" for kind, p in patterns if p.search(text)]
    return found


def request_erasure(s3_api, settings, day, rows, name="requests.csv"):
    out = io.StringIO()
    writer = csv.DictWriter(out, ["request_id", "received_at", "profile_id", "email", "email_sha256"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    s3_api.put_object(Bucket=settings.first_party_bucket, Key=f"erasure_requests/{day}/{name}", Body=out.getvalue().encode())


def test_erasure_leaves_no_trace_and_stays_through_reruns_and_backfills(two_nights, audience_api, s3_api, monkeypatch):
    settings = two_nights["settings"]
    person = someone_everywhere()
    identifiers = identifiers_of(person)
    uid2 = {h for (h,) in query("""SELECT email_sha256 FROM intermediate.int_profile_identifiers
                                   WHERE profile_id = ? AND hash_profile = 'uid2'""", [person])}
    held = set().union(*(audience_api.members(s) for s in ("high_earning_homeowners", "upsell_prospects")))
    assert {e for e, _ in held} & uid2  # the destination holds them before the request
    held_by = {d for (d,) in query("SELECT DISTINCT destination_id FROM activation.destination_members WHERE profile_id = ?", [person])}
    before = scan_warehouse(settings, identifiers)
    assert {"profile_id", "email", "hash", "partner_person_id"} <= {leak.rsplit(" ", 1)[-1] for leak in before}  # the scan finds them
    notices_expected = {p for (p,) in query("SELECT DISTINCT partner_id FROM marts.partner_person_links WHERE profile_id = ?", [person])}
    email = query("SELECT email FROM raw.first_party_profiles WHERE profile_id = ?", [person])[0][0]
    request_erasure(s3_api, settings, D, [  # as the person typed it: case and spaces differ, normalization finds them
        {"request_id": "ER-1", "received_at": "2026-11-21T08:00:00Z", "email": f"  {email.upper()} "},
        {"request_id": "", "received_at": "2026-11-21T08:00:00Z", "email": "someone@example.com"},  # rejected: no id
    ])
    night(D, "n2")

    leaks = scan_warehouse(settings, identifiers)
    leaks += scan_objects(s3_api, [settings.quarantine_bucket], identifiers)
    leaks += scan_objects(s3_api, [settings.first_party_bucket], identifiers, skip=("profiles/", "erasure_requests/"))
    leaks += scan_files(settings.data_dir, identifiers)
    assert leaks == []
    for segment in ("high_earning_homeowners", "upsell_prospects"):  # the destination was sent a remove
        assert not {e for e, _ in audience_api.members(segment)} & uid2
    removes = query("""SELECT sum(removes) FROM activation.activation_log WHERE run_id = 'n2' AND destination_id = 'personalization_api'
                       AND status = 'sent'""")[0][0]
    assert removes and removes >= 1

    # each partner that sent data about them has a notice in its outbox (spec layout and columns)
    agreements = load_agreements(settings.agreements_dir)
    for partner_id in notices_expected:
        bucket, _, prefix = agreements[partner_id].outbox(settings.outbox_bucket).removeprefix("s3://").partition("/")
        body = s3_api.get_object(Bucket=bucket, Key=f"{prefix}erasure/{D}.csv")["Body"].read().decode()
        rows = list(csv.DictReader(io.StringIO(body)))
        assert list(rows[0]) == ["partner_person_id", "email_sha256", "request_id"]
        assert {r["request_id"] for r in rows} == {"ER-1"} and {r["partner_person_id"] for r in rows} <= identifiers["partner_person_id"]
    # a receipt, in the audit and in object storage, with counts and no identifier
    [(status, receipt, location)] = query("""SELECT status, receipt, location FROM audit.data_subject_requests
                                             WHERE request_id = 'ER-1'""")
    receipt = json.loads(receipt)
    assert status == "done" and location.endswith(f"erasure_receipts/{D}/ER-1.json")
    tables = {t["table"]: t["rows"] for t in receipt["rows_deleted"]}
    assert tables["raw.first_party_profiles"] == 1 and tables["raw.partner_records"] >= 2
    assert {p for (p,) in query("""SELECT DISTINCT partner_id FROM audit.data_deletions WHERE request_id = 'ER-1'
                                   AND location = 'raw.partner_records' AND rows > 0""")} >= {"acme_bank", "globex_retail"}
    assert sorted(receipt["partners_notified"]) == sorted(notices_expected)
    assert {d["destination_id"] for d in receipt["destinations_sent_a_remove_tonight"]} == held_by
    [rejected] = query("SELECT receipt FROM audit.data_subject_requests WHERE status = 'rejected'")
    assert "row 3 field 'request_id': empty" in rejected[0]
    assert query("SELECT count(*) FROM raw.erasure_requests") == [(0,)]

    # a re-run of D, a backfill of D-1 and a reprocessing of every drop (new ingestion rules) bring nobody back
    night(D, "rerun")
    # the snapshot still holds them: it is loaded without them, so there is no profile row to delete again
    assert query("SELECT count(*) FROM audit.data_deletions WHERE run_id = 'rerun' AND location = 'raw.first_party_profiles'") == [(0,)]
    assert query("SELECT count(*) FROM raw.first_party_profiles WHERE profile_id = ?", [person]) == [(0,)]
    night(D - dt.timedelta(days=1), "backfill")
    monkeypatch.setattr(ingest, "INGEST_VERSION", ingest.INGEST_VERSION + "-reprocess")
    night(D - dt.timedelta(days=1), "reprocessed")
    assert query("SELECT count(DISTINCT event) FILTER (WHERE event = 'loaded') FROM audit.drop_events WHERE run_id = 'reprocessed'") == [(1,)]
    leaks = scan_warehouse(settings, identifiers)
    leaks += scan_objects(s3_api, [settings.quarantine_bucket], identifiers)
    assert leaks == []
    again = query("""SELECT location, sum(rows) FROM audit.data_deletions WHERE run_id = 'reprocessed' AND reason = 'erasure'
                     AND partner_id = 'acme_bank' GROUP BY 1""")
    assert dict(again).get("raw.partner_records", 0) >= 1  # the reloaded rows were suppressed again


def test_access_request_exports_everything_held_with_provenance(two_nights, s3_api):
    settings = two_nights["settings"]
    person = someone_everywhere()
    email = query("SELECT email FROM raw.first_party_profiles WHERE profile_id = ?", [person])[0][0]
    out = io.StringIO()
    csv.writer(out).writerows([["request_id", "received_at", "profile_id", "email"], ["AR-1", "2026-11-21T10:00:00Z", "", email]])
    s3_api.put_object(Bucket=settings.first_party_bucket, Key=f"access_requests/{D}/requests.csv", Body=out.getvalue().encode())
    night(D, "n2")
    document = json.loads(s3_api.get_object(Bucket=settings.first_party_bucket, Key=f"access_exports/{D}/AR-1.json")["Body"].read())
    [subject] = document["subjects"]
    assert subject["profile_id"] == person and subject["first_party"][0]["email"] == email
    assert set(subject["partners"]) == {"acme_bank", "globex_retail"}
    for partner_id, held in subject["partners"].items():
        expected = query("SELECT count(*) FROM intermediate.int_partner_records_matched WHERE profile_id = ? AND partner_id = ?",
                         [person, partner_id])[0][0]
        assert len(held["records"]) == expected > 0
        assert all(r["drop_date"] and r["delivery_id"] for r in held["records"])  # provenance
        assert {a["attribute"] for a in held["attributes"]} <= set(load_agreements(settings.agreements_dir)[partner_id].attributes)
    assert {s["segment_name"] for s in subject["segments"]} == {
        s for (s,) in query("SELECT segment_name FROM marts.segment_membership WHERE profile_id = ?", [person])}
    [(status, counts)] = query("SELECT status, receipt FROM audit.data_subject_requests WHERE request_id = 'AR-1'")
    assert status == "done" and json.loads(counts)["profiles"] == 1 and email not in counts
    assert query("SELECT count(*) FROM raw.access_requests") == [(0,)]


# --- consent withdrawal -----------------------------------------------------------------------

def deliver_rows(s3_api, settings, partner_id: str, day: dt.date, rows: list[dict], *, claimed_rows: int | None = None,
                 gz: bool = False) -> None:
    """A hand-made drop (spec layout: one CSV, manifest with sha256 and counts, _SUCCESS last); a partner
    without an agreement sends the rows' own columns; claimed_rows != len(rows) makes the drop fail whole."""
    import gzip
    import hashlib

    from partner_pipeline.agreements import RECORD_COLUMNS

    agreement = load_agreements(settings.agreements_dir).get(partner_id)
    out = io.StringIO()
    columns = [*RECORD_COLUMNS, *agreement.attributes] if agreement else list(rows[0])
    writer = csv.DictWriter(out, columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    data = gzip.compress(out.getvalue().encode(), mtime=0) if gz else out.getvalue().encode()
    name = "records-000.csv.gz" if gz else "records-000.csv"
    prefix = f"{partner_id}/{day}/"
    for obj in s3_api.list_objects_v2(Bucket=settings.landing_bucket, Prefix=prefix).get("Contents", []):
        s3_api.delete_object(Bucket=settings.landing_bucket, Key=obj["Key"])  # this delivery replaces the earlier one
    count = len(rows) if claimed_rows is None else claimed_rows
    manifest = {"partner_id": partner_id, "agreement_id": agreement.agreement_id if agreement else f"{partner_id}-none",
                "drop_date": day.isoformat(), "schema_version": 1,
                "files": [{"key": name, "rows": count, "sha256": hashlib.sha256(data).hexdigest()}], "record_count": count}
    s3_api.put_object(Bucket=settings.landing_bucket, Key=prefix + name, Body=data)
    s3_api.put_object(Bucket=settings.landing_bucket, Key=prefix + "manifest.json", Body=json.dumps(manifest).encode())
    s3_api.put_object(Bucket=settings.landing_bucket, Key=prefix + "_SUCCESS", Body=b"")


def latest_record(partner_id: str, profile_id: str) -> dict:
    with warehouse(load_settings(), read_only=True) as con:
        cursor = con.execute("""SELECT r.* FROM raw.partner_records r JOIN intermediate.int_partner_records_matched m
                                USING (partner_id, drop_date, partner_record_id) WHERE m.profile_id = ? AND r.partner_id = ?
                                ORDER BY r.drop_date DESC LIMIT 1""", [profile_id, partner_id])
        row = dict(zip([d[0] for d in cursor.description], cursor.fetchone()))
        return {**row, **{a["attribute"]: a["value"] for a in row.pop("attributes")}}  # as the partner delivered it


def test_a_later_withdrawal_removes_attributes_and_stops_sending(two_nights, audience_api, s3_api):
    settings = two_nights["settings"]
    sent = """SELECT m.profile_id FROM activation.destination_members m
              JOIN marts.profile_partner_attributes a ON a.profile_id = m.profile_id AND a.partner_id = ?
              WHERE m.destination_id = 'personalization_api' AND m.segment_name = ? ORDER BY 1 LIMIT 1"""
    withdrawn = query(sent, ["globex_retail", "upsell_prospects"])[0][0]     # withdraws consent_enrichment at Globex
    refuses = query(sent, ["acme_bank", "high_earning_homeowners"])[0][0]    # withdraws consent_activation at Acme
    uid2 = dict(query("""SELECT profile_id, email_sha256 FROM intermediate.int_profile_identifiers
                         WHERE hash_profile = 'uid2' AND profile_id IN (?, ?)""", [withdrawn, refuses]))
    globex, acme = latest_record("globex_retail", withdrawn), latest_record("acme_bank", refuses)
    ts = "2026-11-21T09:00:00Z"
    deliver_rows(s3_api, settings, "globex_retail", D, [{**globex, "partner_record_id": "G-W1", "consent_enrichment": "false",
                                                         "consent_ts": ts}])
    deliver_rows(s3_api, settings, "acme_bank", D, [{**acme, "partner_record_id": "A-W1", "consent_activation": "false",
                                                     "consent_ts": ts}])
    night(D, "n2")
    assert query("SELECT count(*) FROM marts.profile_partner_attributes WHERE profile_id = ? AND partner_id = 'globex_retail'",
                 [withdrawn]) == [(0,)]
    assert query("SELECT globex_retail__loyalty_tier FROM marts.enriched_profiles WHERE profile_id = ?", [withdrawn]) == [(None,)]
    # Acme's data still enriches (consent_enrichment holds), but the person is no longer sent anywhere Acme's data selects
    assert query("SELECT count(*) FROM marts.profile_partner_attributes WHERE profile_id = ? AND partner_id = 'acme_bank'",
                 [refuses])[0][0] > 0
    assert query("SELECT count(*) FROM marts.activation_audiences WHERE profile_id IN (?, ?)", [withdrawn, refuses]) == [(0,)]
    for segment in ("upsell_prospects", "high_earning_homeowners"):
        assert not {e for e, _ in audience_api.members(segment)} & set(uid2.values())
    # the raw records stay: evidence of the partner's consent state
    assert query("SELECT count(*) FROM raw.partner_records WHERE partner_id = 'globex_retail' AND partner_record_id = 'G-W1' AND consent_enrichment = 'false'") == [(1,)]
