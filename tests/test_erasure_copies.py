"""Erasure reaches every copy: access exports written before the erasure, quarantined rows and
quarantined objects whose identifiers are malformed (case, spaces) or split over lines, and the
partners (with or without an agreement) whose drops held the person, even after being told.
Every night function as the DAG runs it, the real S3 server and DuckDB files."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import re

import pytest

from partner_pipeline.agreements import RECORD_COLUMNS, load_agreements
from partner_pipeline.settings import load_settings
from test_privacy import (D, HASH_PROFILES, deliver_rows, identifiers_of, latest_record, night, query, request_erasure,  # noqa: F401
                          scan_objects, someone_everywhere, two_nights)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def own_outboxes(pipeline_env, agreements_dir):
    """An agreement may name a fixed outbox bucket (Globex's does), shared by every test of the session:
    point it into this test's own outbox bucket, so the notices written here are never read by another test."""
    bucket = pipeline_env["PIPELINE_OUTBOX_BUCKET"]
    for path in agreements_dir.glob("*.yaml"):
        path.write_text(re.sub(r"^outbox_uri: .*$", f"outbox_uri: s3://{bucket}/{path.stem}/", path.read_text(), flags=re.M))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _email_under(email: str, profile: str) -> str:
    """The spec's hash profiles (partner-drop.md, "Identifier normalization")."""
    email = (re.sub(r"\s", "", email) if profile == "google" else email.strip(" \t")).lower()
    local, _, domain = email.partition("@")
    if (profile in ("canonical", "google") and domain in ("gmail.com", "googlemail.com")) or (profile == "uid2" and domain == "gmail.com"):
        local = local.replace(".", "")
        if profile != "google":
            local = local.split("+")[0]
        if profile == "canonical":
            domain = "gmail.com"
    return f"{local}@{domain}"


def every_form(profile_id: str) -> dict[str, set[str]]:
    """identifiers_of, plus the email and phone hashed under every hash profile, and every hash in
    upper case too (a malformed copy is still the person)."""
    found = identifiers_of(profile_id)
    email, phone = query("SELECT email, phone FROM raw.first_party_profiles WHERE profile_id = ?", [profile_id])[0]
    hashes = set(found["hash"]) | {_sha(_email_under(email, p)) for p in HASH_PROFILES}
    if phone and phone.strip().startswith("+"):
        digits = re.sub(r"\D", "", phone)
        hashes |= {_sha("+" + digits), _sha(digits)}
    found["hash"] = hashes | {h.upper() for h in hashes}
    return found


def others(partner_id: str, persons: set[str], n: int) -> list[dict]:
    """n raw records of the partner about other people (valid rows to surround the person's)."""
    rows = query(f"""SELECT {', '.join(RECORD_COLUMNS)} FROM raw.partner_records
                     WHERE partner_id = ? AND NOT list_contains(?, partner_person_id) ORDER BY partner_record_id LIMIT ?""",
                 [partner_id, sorted(persons), n])
    columns = list(RECORD_COLUMNS)
    return [{**dict(zip(columns, r)), "partner_record_id": f"OTHER-{i}"} for i, r in enumerate(rows)]


def for_csv(record: dict) -> dict:
    return {k: None if v is None else str(v) for k, v in record.items()}


def read_csv_object(s3_api, bucket: str, key: str) -> list[list[str]]:
    body = s3_api.get_object(Bucket=bucket, Key=key)["Body"].read()
    return list(csv.reader(io.StringIO((gzip.decompress(body) if key.endswith(".gz") else body).decode(), newline="")))


def quarantined_keys(s3_api, bucket: str, partner_id: str, day: dt.date, suffix: str) -> list[str]:
    return [o["Key"] for o in s3_api.list_objects_v2(Bucket=bucket, Prefix=f"{partner_id}/{day}/").get("Contents", [])
            if o["Key"].endswith(suffix)]


def notice(s3_api, settings, partner_id: str, day: dt.date) -> list[dict]:
    agreement = load_agreements(settings.agreements_dir).get(partner_id)
    outbox = agreement.outbox(settings.outbox_bucket) if agreement else f"s3://{settings.outbox_bucket}/{partner_id}/"
    bucket, _, prefix = outbox.removeprefix("s3://").partition("/")
    body = s3_api.get_object(Bucket=bucket, Key=f"{prefix}erasure/{day}.csv")["Body"].read().decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    assert body.startswith("partner_person_id,email_sha256,request_id\n")
    return rows


def receipt(request_id: str) -> dict:
    [(status, text)] = query("SELECT status, receipt FROM audit.data_subject_requests WHERE request_id = ? AND request_type = 'erasure'",
                             [request_id])
    assert status == "done"
    return json.loads(text)


def test_an_access_export_made_before_the_erasure_goes_with_the_person(two_nights, s3_api):
    settings = two_nights["settings"]
    person = someone_everywhere()
    bystander = query("SELECT profile_id FROM raw.first_party_profiles WHERE profile_id <> ? ORDER BY 1 LIMIT 1", [person])[0][0]
    forms = every_form(person)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([["request_id", "received_at", "profile_id", "email"],
                                                   ["AR-1", "2026-11-20T10:00:00Z", person, ""],
                                                   ["AR-2", "2026-11-20T10:00:00Z", bystander, ""]])
    day1 = D - dt.timedelta(days=1)
    s3_api.put_object(Bucket=settings.first_party_bucket, Key=f"access_requests/{day1}/requests.csv", Body=out.getvalue().encode())
    night(day1, "n1-access")
    exports = {r: f"access_exports/{day1}/{r}.json" for r in ("AR-1", "AR-2")}
    kept_before = s3_api.get_object(Bucket=settings.first_party_bucket, Key=exports["AR-2"])["Body"].read()
    assert scan_objects(s3_api, [settings.first_party_bucket], forms, skip=("profiles/", "erasure_requests/"))  # the export holds them

    request_erasure(s3_api, settings, D, [{"request_id": "ER-1", "received_at": "2026-11-21T08:00:00Z", "profile_id": person}])
    night(D, "n2")

    listed = {o["Key"] for o in s3_api.list_objects_v2(Bucket=settings.first_party_bucket, Prefix="access_exports/")["Contents"]}
    assert exports["AR-1"] not in listed
    assert s3_api.get_object(Bucket=settings.first_party_bucket, Key=exports["AR-2"])["Body"].read() == kept_before
    assert scan_objects(s3_api, [settings.first_party_bucket], forms, skip=("profiles/", "erasure_requests/")) == []
    location = f"s3://{settings.first_party_bucket}/{exports['AR-1']}"
    assert {"location": location, "rows": 1, "action": "deleted"} in receipt("ER-1")["access_exports_scrubbed"]
    assert query("SELECT request_id, rows FROM audit.data_deletions WHERE location = ?", [location]) == [("ER-1", 1)]
    # the other access request is still on file; the erased person's row of it is not
    rows = read_csv_object(s3_api, settings.first_party_bucket, f"access_requests/{day1}/requests.csv")
    assert [r[0] for r in rows] == ["request_id", "AR-2"]


def quarantine_whole(s3_api, settings, partner_id: str, rows: list[dict]) -> None:
    """The partner's drop of D, quarantined whole: its manifest claims another row count."""
    deliver_rows(s3_api, settings, partner_id, D, rows, claimed_rows=len(rows) + 1)


def expected_csv(partner_id: str, rows: list[dict]) -> list[list[str]]:
    header = [*RECORD_COLUMNS, *load_agreements(load_settings().agreements_dir)[partner_id].attributes]
    return [header] + [[r.get(c) if r.get(c) is not None else "" for c in header] for r in rows]


def test_quarantined_rows_and_copies_match_hashes_whatever_the_case_and_spaces(two_nights, s3_api):
    settings = two_nights["settings"]
    person = someone_everywhere()
    forms = every_form(person)
    globex, acme = latest_record("globex_retail", person), latest_record("acme_bank", person)
    email = globex["email_sha256"]
    # Globex's drop loads; three malformed rows of the person go to raw.quarantined_rows, each carrying
    # only an identifier that an exact comparison misses
    malformed = [{**globex, "partner_record_id": "G-UPPER", "partner_person_id": "G-NEW-1", "email_sha256": email.upper(), "phone_sha256": ""},
                 {**globex, "partner_record_id": "G-SPACES", "partner_person_id": "G-NEW-2", "email_sha256": f"  {email} ", "phone_sha256": ""},
                 {**globex, "partner_record_id": "G-PERSON", "partner_person_id": f" {globex['partner_person_id']} ",
                  "email_sha256": "", "phone_sha256": ""}]
    deliver_rows(s3_api, settings, "globex_retail", D, [for_csv(r) for r in others("globex_retail", forms["partner_person_id"], 60) + malformed])
    # Acme's drop is quarantined whole; its copy holds the person the same two ways
    kept = [for_csv(r) for r in others("acme_bank", forms["partner_person_id"], 20)]
    theirs = [{**for_csv(acme), "partner_record_id": "A-UPPER", "partner_person_id": "A-NEW-1", "email_sha256": acme["email_sha256"].upper(),
               "phone_sha256": ""},
              {**for_csv(acme), "partner_record_id": "A-SPACES", "partner_person_id": "A-NEW-2", "email_sha256": f" {acme['email_sha256']}\t",
               "phone_sha256": ""}]
    quarantine_whole(s3_api, settings, "acme_bank", kept[:5] + theirs[:1] + kept[5:12] + theirs[1:] + kept[12:])
    request_erasure(s3_api, settings, D, [{"request_id": "ER-1", "received_at": "2026-11-21T08:00:00Z", "profile_id": person}])
    night(D, "n2")

    assert query("SELECT partner_record_id FROM raw.quarantined_rows WHERE partner_record_id LIKE 'G-%'") == []
    assert query("SELECT sum(rows) FROM audit.data_deletions WHERE location = 'raw.quarantined_rows' AND request_id = 'ER-1' AND drop_date = ?",
                 [D]) == [(3,)]
    [key] = quarantined_keys(s3_api, settings.quarantine_bucket, "acme_bank", D, ".csv")
    assert read_csv_object(s3_api, settings.quarantine_bucket, key) == expected_csv("acme_bank", kept)
    assert scan_objects(s3_api, [settings.quarantine_bucket], forms) == []
    assert {"location": f"s3://{settings.quarantine_bucket}/{key}", "rows": 2, "action": "rows removed"} in receipt("ER-1")["objects_scrubbed"]


def test_a_quarantined_csv_copy_is_scrubbed_record_by_record_not_line_by_line(two_nights, s3_api):
    settings = two_nights["settings"]
    person = someone_everywhere()
    forms = every_form(person)
    acme = for_csv(latest_record("acme_bank", person))
    # quoted fields spanning lines, before and after the identifier columns, in the person's records
    # and in others' (which must come through as sent)
    last = list(load_agreements(settings.agreements_dir)["acme_bank"].attributes)[-1]
    kept = [for_csv(r) for r in others("acme_bank", forms["partner_person_id"], 20)]
    kept[3] = {**kept[3], "partner_record_id": "OTHER-3\nwith a newline", last: "a value\r\nover two lines"}
    theirs = [{**acme, "partner_record_id": "A-BEFORE\n"}, {**acme, "partner_record_id": "A-AFTER", last: "spans\nlines"}]
    quarantine_whole(s3_api, settings, "acme_bank", kept[:10] + theirs[:1] + kept[10:15] + theirs[1:] + kept[15:])
    request_erasure(s3_api, settings, D, [{"request_id": "ER-1", "received_at": "2026-11-21T08:00:00Z", "profile_id": person}])
    night(D, "n2")

    [key] = quarantined_keys(s3_api, settings.quarantine_bucket, "acme_bank", D, ".csv")
    assert read_csv_object(s3_api, settings.quarantine_bucket, key) == expected_csv("acme_bank", kept)
    assert scan_objects(s3_api, [settings.quarantine_bucket], forms) == []
    assert {"location": f"s3://{settings.quarantine_bucket}/{key}", "rows": 2, "action": "rows removed"} in receipt("ER-1")["objects_scrubbed"]


def test_a_quarantined_parquet_copy_is_rewritten_without_the_person(tmp_path):
    """The Parquet branch of the copy scrub (the drops of the night tests are CSV): read and written
    through pyarrow with the path as an argument; the other rows and the schema are kept."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from partner_pipeline import data_rights as privacy

    email = _sha("someone@example.com")
    table = pa.table({"partner_record_id": ["1", "2", "3"], "partner_person_id": ["P1", " P2 ", "P3"],
                      "email_sha256": [_sha("a@example.com"), None, email.upper()], "consent_enrichment": [True, False, True]})
    path = tmp_path / "it's a \"drop\".parquet"  # a partner's file name: quotes and all
    pq.write_table(table, path)
    suppressed = {"email_sha256": {privacy.suppression_key(email): {"ER-1"}}, "phone_sha256": {},
                  "partner_person": {privacy.suppression_key("acme_bank:P2"): {"ER-1"}}, "profile_id": {}}
    rows, dropped, body = privacy._scrub_file(path, "acme_bank", suppressed)
    assert rows == 3 and [r["partner_record_id"] for r in dropped] == ["2", "3"]
    out = tmp_path / "out.parquet"
    out.write_bytes(body)
    assert pq.read_table(out).equals(table.take([0]))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    assert privacy._scrub_file(tmp_path / "bad.parquet", "acme_bank", suppressed) is None


def test_every_partner_whose_drop_held_the_person_is_told_and_told_again(two_nights, s3_api):
    settings = two_nights["settings"]
    person = someone_everywhere()
    forms = every_form(person)
    globex, acme = latest_record("globex_retail", person), latest_record("acme_bank", person)
    # a partner without an agreement: its drop is quarantined whole, and it held the person
    stranger = [{"partner_record_id": f"I-{i}", "partner_person_id": f"INI-{i}", "email_sha256": _sha(f"someone{i}@example.com")}
                for i in range(5)]
    stranger[2] = {"partner_record_id": "I-2", "partner_person_id": "INI-2", "email_sha256": acme["email_sha256"].upper()}
    deliver_rows(s3_api, settings, "initech_data", D, stranger, gz=True)
    request_erasure(s3_api, settings, D, [{"request_id": "ER-1", "received_at": "2026-11-21T08:00:00Z", "profile_id": person}])
    night(D, "n2")

    assert notice(s3_api, settings, "initech_data", D) == [
        {"partner_person_id": "INI-2", "email_sha256": acme["email_sha256"], "request_id": "ER-1"}]
    assert "initech_data" in receipt("ER-1")["partners_notified"]
    [key] = quarantined_keys(s3_api, settings.quarantine_bucket, "initech_data", D, ".csv.gz")
    assert [r[0] for r in read_csv_object(s3_api, settings.quarantine_bucket, key)] == ["partner_record_id", "I-0", "I-1", "I-3", "I-4"]

    # the next night both partners send the person again: Globex in a drop that loads, Acme in one
    # quarantined whole; each is told again, in that night's notice
    later = D + dt.timedelta(days=1)
    deliver_rows(s3_api, settings, "globex_retail", later,
                 [for_csv(r) for r in others("globex_retail", forms["partner_person_id"], 40)] + [for_csv({**globex, "partner_record_id": "G-AGAIN"})])
    deliver_rows(s3_api, settings, "acme_bank", later, [for_csv({**acme, "partner_record_id": "A-AGAIN"})], claimed_rows=7)
    night(later, "n3")
    for partner_id, sent in (("globex_retail", globex), ("acme_bank", acme)):
        assert notice(s3_api, settings, partner_id, later) == [
            {"partner_person_id": sent["partner_person_id"], "email_sha256": sent["email_sha256"], "request_id": "ER-1"}], partner_id
    assert query("SELECT count(*) FROM raw.partner_records WHERE partner_id = 'globex_retail' AND partner_record_id = 'G-AGAIN'") == [(0,)]
    assert scan_objects(s3_api, [settings.quarantine_bucket], forms) == []

    # a re-run of that night writes the same notices
    agreements = load_agreements(settings.agreements_dir)
    files = {p: agreements[p].outbox(settings.outbox_bucket) for p in ("globex_retail", "acme_bank")}
    before = {p: notice(s3_api, settings, p, later) for p in files}
    night(later, "n3-rerun")
    assert {p: notice(s3_api, settings, p, later) for p in files} == before
