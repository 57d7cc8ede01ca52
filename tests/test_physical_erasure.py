"""Erasure is physical and every copy has a retention: the bytes of the DuckDB files and of the
delivered activation files, searched directly; copies past their declared retention deleted on
the day. Every night function as the DAG runs it, the real S3 server, real DuckDB files."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import re
import tempfile
from pathlib import Path

import duckdb
import pytest
import yaml

from partner_pipeline.agreements import load_agreements
from partner_pipeline.settings import load_settings
from partner_pipeline_dev import synth
from conftest import run_night as night
from test_privacy import D, identifiers_of, query, request_erasure

pytestmark = pytest.mark.slow

S3_FILE_DESTINATIONS = ("crm_email", "ads_customer_list")


def set_file_retention(governance_dir, **days):
    path = governance_dir / "destinations.yaml"
    document = yaml.safe_load(path.read_text())
    for destination_id, n in days.items():
        document["destinations"][destination_id]["file_retention_days"] = n
    path.write_text(yaml.safe_dump(document))


@pytest.fixture
def first_night(pipeline_env, governance_dir, agreements_dir, audience_api, s3_api, tmp_path):
    """Drops of D-1 and D from both partners, the night of D-1 run. The governance files are a
    private copy (governance_dir) a test may edit before the first night."""
    def run(**file_retention):
        set_file_retention(governance_dir, **file_retention)
        settings = load_settings()
        agreements = load_agreements(agreements_dir)
        root = tmp_path / "synth"
        synth.generate_scenario(root, landing_bucket=settings.landing_bucket, first_party_bucket=settings.first_party_bucket,
                                agreements=agreements, drop_date=D - dt.timedelta(days=1), n_profiles=800,
                                rows_per_partner=600, seed=21, bad_row_share=0.02)
        for partner_id in ("acme_bank", "globex_retail"):
            synth.write_drop(root, settings.landing_bucket, synth.DropSpec(agreements[partner_id], D, rows=500, bad_row_share=0.02),
                             21, 800, 22)
        synth.upload_tree(s3_api, root)
        night(D - dt.timedelta(days=1), "n1")
        return settings
    return run


def someone_in_a_delivered_file() -> str:
    """A profile a file destination was sent (an add file in our bucket) and both partners linked."""
    return query(f"""
        SELECT m.profile_id FROM activation.destination_members m
        JOIN marts.partner_person_links a ON a.profile_id = m.profile_id AND a.partner_id = 'acme_bank'
        JOIN marts.partner_person_links g ON g.profile_id = m.profile_id AND g.partner_id = 'globex_retail'
        WHERE m.destination_id IN {S3_FILE_DESTINATIONS} ORDER BY 1 LIMIT 1""")[0][0]


def forms(identifiers: dict[str, set[str]]) -> dict[str, set[bytes]]:
    """Each identifier with the spellings a file could hold it in (as typed, lower, upper case)."""
    found = {}
    for kind, values in identifiers.items():
        if kind == "email":  # one email, as typed and normalized: one identifier
            found[f"email {sorted(values)[0]}"] = {s.encode() for v in values for s in (v, v.lower(), v.upper())}
            continue
        for v in values:
            found[f"{kind} {v}"] = {v.encode(), v.lower().encode(), v.upper().encode()}
    return found


def duckdb_files(settings) -> list:
    """Every DuckDB file (and write-ahead log, half-built or rewriting copy) under the data
    directory: the warehouse, the marts, the published copy, any stage left behind."""
    return sorted(p for p in settings.data_dir.rglob("*") if p.is_file() and ".duckdb" in p.name)


def search_bytes(stores: dict[str, bytes], identifiers: dict[str, set[bytes]]) -> dict[str, list[str]]:
    """identifier -> the stores (file or object name -> its bytes) that hold it in any spelling, read
    directly, not queried: a freed block is invisible to SQL."""
    hits: dict[str, list[str]] = {}
    for where, data in stores.items():
        for name, spellings in identifiers.items():
            if any(s in data for s in spellings):
                hits.setdefault(name, []).append(where)
    return hits


def warehouse_bytes(settings, s3_api) -> dict[str, bytes]:
    """Every store of the warehouse and its copies: the DuckDB files (warehouse or marts, published copy,
    stages); on the lake, also the catalog's files and every object in the lake's bucket (data and
    delete files of every snapshot kept)."""
    stores = {path.name: path.read_bytes() for path in duckdb_files(settings)}
    if settings.warehouse_kind == "lake":
        stores |= {path.name: path.read_bytes() for path in Path(settings.lake_catalog).parent.glob("*") if path.is_file()}
        stores |= {f"s3://{settings.lake_bucket}/{key}": body + parquet_text(body)
                   for key, body in delivered_objects(s3_api, settings.lake_bucket).items()}
    return stores


def parquet_text(body: bytes) -> bytes:
    """Every row of a Parquet file as text: its pages are compressed, so its raw bytes alone (searched
    too, for the footer's statistics) prove nothing absent."""
    with tempfile.NamedTemporaryFile(suffix=".parquet") as file:
        file.write(body)
        file.flush()
        with duckdb.connect() as con:
            return (con.execute("SELECT string_agg(CAST(t AS VARCHAR), chr(10)) FROM read_parquet(?) t", [file.name])
                    .fetchone()[0] or "").encode()


def delivered_objects(s3_api, bucket) -> dict[str, bytes]:
    return {o["Key"]: s3_api.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for page in s3_api.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page.get("Contents", [])}


def activation_hashes(profile_id: str) -> set[str]:
    """The person's hashes under the file destinations' hash profiles (what their files hold)."""
    return {h for row in query("""SELECT email_sha256, phone_sha256 FROM activation.destination_members
                                  WHERE profile_id = ? AND destination_id IN ('crm_email', 'ads_customer_list')""",
                               [profile_id]) for h in row if h}


# The spec's hash profiles, written out here from the spec's table (not from the pipeline's SQL), so
# the search covers the person under every profile whether or not an agreement uses it.
GMAIL_DOMAINS = {"canonical": {"gmail.com", "googlemail.com"}, "uid2": {"gmail.com"}, "basic": set(),
                 "google": {"gmail.com", "googlemail.com"}}


def spec_email(raw: str, profile: str) -> str:
    email = re.sub(r"\s", "", raw) if profile == "google" else raw.strip(" \t")
    local, _, domain = email.lower().partition("@")
    if domain in GMAIL_DOMAINS[profile]:
        local = local.replace(".", "")
        if profile in ("canonical", "uid2"):
            local = local.split("+", 1)[0]
        if profile == "canonical":
            domain = "gmail.com"
    return f"{local}@{domain}"


def spec_phone_digits(raw: str, country_code: str = "1") -> str:
    digits = re.sub(r"\D", "", raw)
    if raw.strip().startswith("+"):
        return digits
    if digits.startswith("00"):
        return digits[2:]
    return country_code + digits.removeprefix("0")


def every_form(profile_id: str) -> dict[str, set[bytes]]:
    """The person under every hash profile: raw and normalized email and phone, their SHA-256 under
    each profile, profile id and partner person ids, each as typed, lower and upper case."""
    known = identifiers_of(profile_id)
    email, phone = query("SELECT email, phone FROM raw.first_party_profiles WHERE profile_id = ?", [profile_id])[0]
    digits = spec_phone_digits(phone)
    emails = {spec_email(email, profile) for profile in GMAIL_DOMAINS}
    phones = {digits, "+" + digits}
    hashes = {hashlib.sha256(v.encode()).hexdigest() for v in emails | phones}
    assert known["hash"] <= hashes, "the spec's normalization here must agree with the pipeline's"
    values = {"profile_id": known["profile_id"], "email": {email} | emails, "phone": {phone} | phones, "hash": hashes,
              "partner_person_id": known["partner_person_id"]}
    return {f"{kind} {v}": {v.encode(), v.lower().encode(), v.upper().encode()} for kind, vs in values.items() for v in vs}


def pipeline_objects(s3_api, settings) -> dict[str, bytes]:
    """Every object the pipeline wrote, but those the spec or our CRM owns: the partners' landing
    bucket, our first-party snapshots and requests, the erasure notices (the spec's instruction to
    the partner) and tonight's remove files (the destination's instruction, deleted once confirmed)."""
    found = {}
    for bucket in (settings.quarantine_bucket, settings.activation_bucket, settings.reports_bucket, settings.outbox_bucket,
                   settings.first_party_bucket):
        for key, body in delivered_objects(s3_api, bucket).items():
            if key.startswith(("profiles/", "erasure_requests/")) or "/erasure/" in key or re.search(r"/remove-\d{5}\.", key):
                continue
            found[f"s3://{bucket}/{key}"] = gzip.decompress(body) if key.endswith(".gz") else body
    return found


@pytest.fixture(params=["file", "lake"])
def warehouse_kind(request, monkeypatch) -> str:
    """The warehouse in its DuckDB file, or in the lake (its own bucket in the S3 server, embedded catalog)."""
    monkeypatch.setenv("PIPELINE_WAREHOUSE", request.param)
    return request.param


def test_no_byte_of_an_erased_person_stays_in_any_warehouse_file(warehouse_kind, first_night, s3_api, s3_server):
    settings = first_night()
    person = someone_in_a_delivered_file()
    identifiers = forms(identifiers_of(person))
    everywhere = every_form(person)
    delivered_hashes = activation_hashes(person)
    stores = warehouse_bytes(settings, s3_api)
    if warehouse_kind == "file":
        assert {settings.warehouse_path.name, settings.marts_path.name, settings.published_path.name} <= set(stores)
    else:  # the marts too are the lake's; nothing is copied for analysts
        assert "catalog.sqlite" in stores and [k for k in stores if "/marts/" in k and k.endswith(".parquet")]
        assert not (settings.warehouse_path.exists() or settings.marts_path.exists() or settings.published_path.exists())
    before = search_bytes(stores, identifiers)
    assert set(before) == set(identifiers), f"the byte search must see every identifier before: {set(identifiers) - set(before)}"
    def everything() -> dict[str, bytes]:  # every local file, and the lake's objects
        return {**{str(p): p.read_bytes() for p in settings.data_dir.rglob("*") if p.is_file()}, **warehouse_bytes(settings, s3_api)}

    assert {f"profile_id {person}", *(f"hash {h}" for h in delivered_hashes)} <= set(search_bytes(everything(), everywhere))
    adds = {k: v for k, v in delivered_objects(s3_api, settings.activation_bucket).items() if "/add-" in k}
    assert any(h.encode() in body for h in delivered_hashes for body in adds.values())

    # the lake's objects that hold the person, as stored (an erasure rewrites or deletes each)
    held = {key: body for key, body in delivered_objects(s3_api, settings.lake_bucket).items()
            if search_bytes({key: body + parquet_text(body)}, everywhere)}
    assert (warehouse_kind == "file") != bool(held)

    email = query("SELECT email FROM raw.first_party_profiles WHERE profile_id = ?", [person])[0][0]
    request_erasure(s3_api, settings, D, [{"request_id": "ER-1", "received_at": "2026-11-21T08:00:00Z", "email": f" {email.upper()}"}])
    night(D, "n2")

    assert search_bytes(warehouse_bytes(settings, s3_api), identifiers) == {}
    if warehouse_kind == "lake":  # the objects deleted are gone from the S3 server's own files too, not only from its API
        s3_server.reclaim()
        volumes = b"".join(path.read_bytes() for path in s3_server.store_dir.glob(f"{settings.lake_bucket}_*.dat"))
        assert volumes and [key for key, body in held.items() if body in volumes] == []
    files = duckdb_files(settings)
    # every file and object the pipeline wrote (DuckDB, Parquet, CSV, JSON, HTML, logs), under every hash profile
    assert search_bytes(everything(), everywhere) == {}
    objects = pipeline_objects(s3_api, settings)
    assert {key for key, body in objects.items() if any(s in body for spellings in everywhere.values() for s in spellings)} == set()
    assert not [p for p in files if p.name.endswith((".wal", ".rewriting", ".building"))]
    # the add files delivered before hold them no more; only tonight's remove files name them (the instruction)
    holding = {k for k, body in delivered_objects(s3_api, settings.activation_bucket).items()
               if any(h.encode() in body for h in delivered_hashes)}
    assert holding and all(re.search(rf"/{D}/\d{{6}}/remove-\d{{5}}\.csv$", k) for k in holding), holding
    rewrites = query("SELECT count(*) FROM audit.data_deletions WHERE run_id = 'n2' AND reason = 'erasure' AND location LIKE 's3://%/add-%'")
    assert rewrites[0][0] >= 1


def test_delivered_files_scrubbed_kept_for_their_retention_and_removes_until_confirmed(first_night, s3_api):
    """crm_email keeps its files 2 days: the files of D-1 expire on D+1 (not on D); the remove
    files of D go on D+1, when a later night's sync of the same segment completed."""
    settings = first_night(crm_email=2, ads_customer_list=30)
    person = someone_in_a_delivered_file()
    hashes = activation_hashes(person)
    first = {k for k in delivered_objects(s3_api, settings.activation_bucket) if f"/{D - dt.timedelta(days=1)}/" in k}
    assert any(k.startswith("crm_email/") for k in first) and any(k.startswith("ads_customer_list/") for k in first)
    email = query("SELECT email FROM raw.first_party_profiles WHERE profile_id = ?", [person])[0][0]
    request_erasure(s3_api, settings, D, [{"request_id": "ER-1", "received_at": "2026-11-21T08:00:00Z", "email": email}])
    night(D, "n2")

    objects = delivered_objects(s3_api, settings.activation_bucket)
    assert first <= set(objects)  # nothing expired yet
    for key in first:
        body = objects[key]
        assert not any(h.encode() in body for h in hashes), key
        if key.endswith("manifest.json"):  # the manifest describes the scrubbed files
            manifest = json.loads(body)
            for entry in manifest["files"]:
                data = objects[key.rsplit("/", 1)[0] + "/" + entry["key"]]
                assert entry["rows"] == data.decode().count("\n") - 1
                assert entry["sha256"] == __import__("hashlib").sha256(data).hexdigest()
    removes_of_d = {k for k in objects if re.search(rf"/{D}/\d{{6}}/remove-", k)}
    assert removes_of_d  # the erased person (at least) is removed tonight

    night(D + dt.timedelta(days=1), "n3")
    objects = delivered_objects(s3_api, settings.activation_bucket)
    expired = {k for k in first if k.startswith("crm_email/")}
    assert not expired & set(objects)  # D-1 + 2 days = D+1
    assert {k for k in first if k.startswith("ads_customer_list/")} <= set(objects)  # 30 days
    assert not removes_of_d & set(objects)  # confirmed by the sync of D+1
    assert not any(h.encode() in body for h in hashes for body in objects.values())
    logged = query("SELECT reason, location, drop_date, rows FROM audit.data_deletions WHERE run_id = 'n3' AND reason IN ('retention', 'delivered')")
    assert {(f"s3://{settings.activation_bucket}/{k.split('/')[0]}/{k.split('/')[1]}/{D - dt.timedelta(days=1)}/")
            for k in expired} <= {loc for reason, loc, _, _ in logged if reason == "retention"}
    assert {f"s3://{settings.activation_bucket}/{k}" for k in removes_of_d} == {loc for reason, loc, _, _ in logged if reason == "delivered"}


def test_copies_past_their_declared_retention_are_deleted_on_the_day(pipeline_env, agreements_dir, audience_api, s3_api, tmp_path):
    """Each kind of copy, dated so that one expires today (D) and one tomorrow: today's goes and
    is logged, tomorrow's stays. Periods as declared in partner_pipeline/retention.py."""
    settings = load_settings()
    agreements = load_agreements(agreements_dir)
    root = tmp_path / "synth"
    synth.generate_scenario(root, landing_bucket=settings.landing_bucket, first_party_bucket=settings.first_party_bucket,
                            agreements=agreements, drop_date=D, n_profiles=300, rows_per_partner=200, seed=3)
    synth.upload_tree(s3_api, root)
    for name, body in (("records.csv", b"partner_record_id\n1\n"), ("manifest.json", b"{}"), ("_SUCCESS", b"")):
        s3_api.put_object(Bucket=settings.landing_bucket, Key=f"no_agreement_co/{D}/{name}", Body=body)

    def dated(days):  # (expires today, expires tomorrow)
        return D - dt.timedelta(days=days), D - dt.timedelta(days=days - 1)

    copies = []  # (store, key or path, date, location logged)
    for day in dated(30):
        key = f"no_agreement_co/{day}/delivery-1/report.json"
        copies.append(("s3", settings.quarantine_bucket, key, day, f"s3://{settings.quarantine_bucket}/no_agreement_co/{day}/"))
        key = f"access_exports/{day}/AR-{day}.json"
        copies.append(("s3", settings.first_party_bucket, key, day, f"s3://{settings.first_party_bucket}/access_exports/{day}/"))
    for day in dated(90):
        key = f"old-run/acme_bank__{day}__delivery-1.json"
        copies.append(("file", settings.validation_dir, key, day, str(settings.validation_dir / key)))
        copies.append(("file", settings.reports_dir, f"{day}.html", day, str(settings.reports_dir / f"{day}.html")))
        copies.append(("s3", settings.reports_bucket, f"{day}/report.html", day, f"s3://{settings.reports_bucket}/{day}/"))
    for store, where, key, _day, _ in copies:
        if store == "s3":
            s3_api.put_object(Bucket=where, Key=key, Body=b"{}")
        else:
            (where / key).parent.mkdir(parents=True, exist_ok=True)
            (where / key).write_text("{}")

    night(D, "n1")

    def exists(store, where, key):
        if store == "file":
            return (where / key).exists()
        return s3_api.list_objects_v2(Bucket=where, Prefix=key)["KeyCount"] == 1

    logged = {(loc, day) for loc, day in query("SELECT location, drop_date FROM audit.data_deletions WHERE reason = 'retention'")}
    for store, where, key, day, location in copies:
        expires_today = day in {dated(30)[0], dated(90)[0]}
        assert exists(store, where, key) != expires_today, (key, day)
        assert ((location, day) in logged) == expires_today, (location, day)
    # tonight's own copies stay: the no-agreement drop's quarantine copy, the night's validation results
    assert s3_api.list_objects_v2(Bucket=settings.quarantine_bucket, Prefix=f"no_agreement_co/{D}/")["KeyCount"] > 0
    assert list(settings.validation_dir.glob(f"n1/*__{D}__*.json"))
