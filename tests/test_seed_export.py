"""Seed sets we send (spec "Seed sets we send"; issue 17 item 1), end to end through the nightly task
functions against a real S3 server and DuckDB file, checked against the generator's ground truth
(synth.expected_seed_set): exactly the consenting profiles, hashed under each agreement's profile,
seed_ids that are HMAC-SHA256(key, agreement_id NUL profile_id) cut to 120 bits, stable across nights and
different across agreements; the erased leave the next set and raw.issued_seeds; a missing or short key
refuses that agreement's export only; the audit holds counts, never an identifier."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import hmac
import io
import json
import os
import zlib

import duckdb
import pyarrow.parquet as pq
import pytest

from conftest import run_night, s3
from partner_pipeline import seeds
from partner_pipeline.agreements import load_agreements
from partner_pipeline.settings import load_settings
from partner_pipeline.warehouse import warehouse
from partner_pipeline_dev import synth

D1, D2 = dt.date(2026, 11, 21), dt.date(2026, 11, 22)
N_PROFILES, SEED = 600, 11
ACME_KEY = "test-seed-key-acme-bank-0123456789abcdef"  # tests/conftest.py pipeline_env
GLOBEX_KEY = "globex-" + "k" * 70  # longer than HMAC-SHA256's 64-byte block: the key is hashed first


def seed_id(key: str, agreement_id: str, profile_id: str) -> str:
    """The spec's seed_id, independently of seeds.py: HMAC-SHA256 with Python's hmac, first 120 bits in hex."""
    return hmac.new(key.encode(), f"{agreement_id}\0{profile_id}".encode(), hashlib.sha256).hexdigest()[:30]


def enable_globex_seeds(agreements_dir, outbox_bucket: str, fmt: str = "parquet") -> None:
    path = agreements_dir / "globex_retail.yaml"
    text = path.read_text().replace("outbox_uri: s3://partner-outbox/globex_retail/", f"outbox_uri: s3://{outbox_bucket}/globex/")
    assert f"s3://{outbox_bucket}/globex/" in text
    path.write_text(text + f"seed_set:\n  format: {fmt}\n  secret_variable: seed_secret_globex\n")


def scenario(tmp_path, s3_server, day=D1) -> dict:
    settings = load_settings()
    truth = synth.generate_scenario(tmp_path / "synth", landing_bucket=settings.landing_bucket,
                                    first_party_bucket=settings.first_party_bucket,
                                    agreements=load_agreements(settings.agreements_dir), drop_date=day,
                                    n_profiles=N_PROFILES, rows_per_partner=300, seed=SEED, bad_row_share=0.0)
    synth.upload_tree(s3(s3_server), tmp_path / "synth")
    return truth


def outbox(partner: str) -> tuple[str, str]:
    settings = load_settings()
    agreement = load_agreements(settings.agreements_dir)[partner]
    bucket, _, prefix = agreement.outbox(settings.outbox_bucket).removeprefix("s3://").partition("/")
    return bucket, f"{prefix}seeds/"


def objects(client, partner: str) -> dict[str, bytes]:
    bucket, prefix = outbox(partner)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def seed_rows(found: dict[str, bytes], day: dt.date) -> list[dict]:
    """The rows of the day's seed file, its columns checked."""
    names = [n for n in found if n.startswith(f"{day}/seeds.")]
    assert len(names) == 1, sorted(found)
    if names[0].endswith(".csv.gz"):
        text = gzip.decompress(found[names[0]]).decode()
        header, *lines = text.splitlines()
        assert header == "seed_id,email_sha256,phone_sha256"
        return [dict(zip(("seed_id", "email_sha256", "phone_sha256"), (v or None for v in line.split(",")))) for line in lines]
    table = pq.read_table(io.BytesIO(found[names[0]]))
    assert table.column_names == ["seed_id", "email_sha256", "phone_sha256"]
    return table.to_pylist()


def expected(partner: str, key: str, exclude=()) -> dict[str, tuple]:
    """seed_id -> (profile_id, email_sha256, phone_sha256) from the ground truth and the key."""
    agreement = load_agreements(load_settings().agreements_dir)[partner]
    table = synth.expected_seed_set(agreement, SEED, N_PROFILES, exclude_profile_ids=exclude)
    return {seed_id(key, agreement.agreement_id, r["profile_id"]): (r["profile_id"], r["email_sha256"], r["phone_sha256"])
            for r in table.to_pylist()}


def check_set(found: dict[str, bytes], day: dt.date, want: dict[str, tuple], partner: str, fmt: str) -> list[dict]:
    rows = seed_rows(found, day)
    assert {r["seed_id"]: (r["email_sha256"], r["phone_sha256"]) for r in rows} == {s: v[1:] for s, v in want.items()}
    assert len(rows) == len(want) and [r["seed_id"] for r in rows] == sorted(want)  # ordered by seed_id, no repeat
    assert all(len(r["seed_id"]) == 30 and set(r["seed_id"]) <= set("0123456789abcdef") for r in rows)
    name = f"seeds.{fmt}"
    manifest = json.loads(found[f"{day}/manifest.json"])
    agreement = load_agreements(load_settings().agreements_dir)[partner]
    assert manifest == {"partner_id": partner, "agreement_id": agreement.agreement_id, "drop_date": day.isoformat(),
                        "kind": "seed_set", "mode": "full", "schema_version": 1,
                        "files": [{"key": name, "rows": len(want), "sha256": hashlib.sha256(found[f"{day}/{name}"]).hexdigest()}],
                        "record_count": len(want)}
    assert found[f"{day}/_SUCCESS"] == b""
    return rows


def test_the_seed_id_sql_is_hmac_sha256_cut_to_120_bits():
    con = duckdb.connect()
    for key in (b"k" * 32, b"x" * 64, b"a much longer key than one SHA-256 block of sixty-four bytes, so hashed first" * 2):
        ipad, opad = seeds.hmac_pads(key)
        for agreement_id, profile_id in (("acme-2026-01", "p0000000001"), ("globex-2026-03", "p0000000001"), ("a", "é ü")):
            got = con.execute(f"SELECT {seeds.seed_id_sql('?', '?')}", [opad, ipad, agreement_id, profile_id]).fetchone()[0]
            assert got == hmac.new(key, f"{agreement_id}\0{profile_id}".encode(), hashlib.sha256).hexdigest()[:30]


@pytest.mark.slow
def test_gzip_file_is_one_gzip_member_any_reader_reads_and_the_same_bytes_each_time(tmp_path, monkeypatch):
    """The seed set's csv.gz is compressed in chunks on every core (seeds.gzip_file): the chunks must join
    into one stream that gzip, Python and DuckDB read whole, with the same bytes for the same input."""
    monkeypatch.setattr(seeds, "GZIP_CHUNK_BYTES", 1000)  # many chunks, and more in flight than workers
    source = tmp_path / "seeds.csv"
    lines = ["seed_id,email_sha256"] + [f"{i:030x},{hashlib.sha256(str(i).encode()).hexdigest()}" for i in range(2000)]
    source.write_text("\n".join(lines) + "\n")
    first, second = tmp_path / "first.csv.gz", tmp_path / "second.csv.gz"
    digest = seeds.gzip_file(source, first)
    assert seeds.gzip_file(source, second) == digest == hashlib.sha256(first.read_bytes()).hexdigest()
    assert first.read_bytes() == second.read_bytes()
    body = first.read_bytes()
    assert gzip.decompress(body) == source.read_bytes()
    assert zlib.decompressobj(wbits=31).decompress(body) == source.read_bytes()  # one member: zlib reads no further
    assert duckdb.sql(f"SELECT count(*), max(seed_id) FROM read_csv('{first}', header=true)").fetchone() == (2000, f"{1999:030x}")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    seeds.gzip_file(empty, tmp_path / "empty.csv.gz")
    assert gzip.decompress((tmp_path / "empty.csv.gz").read_bytes()) == b""


def test_seed_sets_end_to_end_stable_erasure_and_rerun(pipeline_env, audience_api, agreements_dir, tmp_path, s3_server, s3_api, monkeypatch):
    settings = load_settings()
    enable_globex_seeds(agreements_dir, settings.outbox_bucket)
    monkeypatch.setenv("AIRFLOW_VAR_SEED_SECRET_GLOBEX", GLOBEX_KEY)
    scenario(tmp_path, s3_server)
    run_night(D1, "night-1")

    acme, globex = expected("acme_bank", ACME_KEY), expected("globex_retail", GLOBEX_KEY)
    consenting = {p for p, _, _ in acme.values()}
    assert 0.3 * N_PROFILES < len(consenting) < 0.5 * N_PROFILES  # about 40% consent to partner sharing
    first = objects(s3_api, "acme_bank")
    assert sorted(first) == [f"{D1}/_SUCCESS", f"{D1}/manifest.json", f"{D1}/seeds.csv.gz"]
    check_set(first, D1, acme, "acme_bank", "csv.gz")
    check_set(objects(s3_api, "globex_retail"), D1, globex, "globex_retail", "parquet")
    # the same profile, another agreement: another token (and, under uid2 vs canonical, maybe other hashes)
    by_profile = {v[0]: s for s, v in globex.items()}
    assert all(by_profile[v[0]] != s for s, v in acme.items() if v[0] in by_profile) and len(by_profile) == len(globex)

    with warehouse(settings, read_only=True) as con:
        issued = con.execute("SELECT partner_id, seed_id, profile_id, first_issued_on, last_issued_on FROM raw.issued_seeds").fetchall()
        audit = con.execute("""SELECT partner_id, agreement_id, seed_date, run_id, status, seeds_sent, location
                               FROM audit.seed_exports ORDER BY 1""").fetchall()
    assert sorted(issued) == sorted([("acme_bank", s, v[0], D1, D1) for s, v in acme.items()]
                                    + [("globex_retail", s, v[0], D1, D1) for s, v in globex.items()])
    assert audit == [("acme_bank", "acme-2026-01", D1, "night-1", "sent", len(acme), f"s3://{settings.outbox_bucket}/acme_bank/seeds/{D1}/"),
                     ("globex_retail", "globex-2026-03", D1, "night-1", "sent", len(globex), f"s3://{settings.outbox_bucket}/globex/seeds/{D1}/")]

    # a re-run of the same date: the same objects, the same issued seeds, the run's one audit row per agreement
    run_night(D1, "night-1")
    assert objects(s3_api, "acme_bank") == first
    with warehouse(settings, read_only=True) as con:
        assert sorted(con.execute("SELECT partner_id, seed_id, profile_id, first_issued_on, last_issued_on FROM raw.issued_seeds")
                      .fetchall()) == sorted(issued)
        assert con.execute("SELECT count(*) FROM audit.seed_exports").fetchone()[0] == 2

    # night 2: one consenting customer is erased; the others keep their seed_ids, the erased is gone everywhere
    erased = sorted(consenting)[3]
    s3_api.put_object(Bucket=settings.first_party_bucket, Key=f"erasure_requests/{D2}/requests.csv",
                      Body=f"request_id,received_at,profile_id\nreq-seed-1,{D2}T08:00:00Z,{erased}\n".encode())
    run_night(D2, "night-2")
    acme2 = expected("acme_bank", ACME_KEY, exclude=[erased])
    assert len(acme2) == len(acme) - 1 and set(acme2) < set(acme)  # stable: every other seed_id as on night 1
    second = objects(s3_api, "acme_bank")
    assert sorted(second) == [f"{D2}/_SUCCESS", f"{D2}/manifest.json", f"{D2}/seeds.csv.gz"]  # night 1's set superseded
    check_set(second, D2, acme2, "acme_bank", "csv.gz")
    erased_seeds = [s for s, v in {**acme, **globex}.items() if v[0] == erased]
    assert len(erased_seeds) == 2
    with warehouse(settings, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM raw.issued_seeds WHERE profile_id = ? OR list_contains(?, seed_id)",
                           [erased, erased_seeds]).fetchone()[0] == 0
        assert con.execute("""SELECT first_issued_on, last_issued_on, count(*) FROM raw.issued_seeds WHERE partner_id = 'acme_bank'
                              GROUP BY ALL""").fetchall() == [(D1, D2, len(acme2))]
        deletions = con.execute("""SELECT reason, request_id, location, partner_id, drop_date, rows FROM audit.data_deletions
                                   WHERE location = 'raw.issued_seeds' OR location LIKE '%/seeds/%' ORDER BY ALL""").fetchall()
        assert deletions == sorted([
            ("erasure", "req-seed-1", "raw.issued_seeds", "acme_bank", D1, 1),
            ("erasure", "req-seed-1", "raw.issued_seeds", "globex_retail", D1, 1),
            ("superseded", None, f"s3://{settings.outbox_bucket}/acme_bank/seeds/{D1}/", "acme_bank", D1, 3),
            ("superseded", None, f"s3://{settings.outbox_bucket}/globex/seeds/{D1}/", "globex_retail", D1, 3),
        ], key=lambda r: tuple("" if v is None else str(v) for v in r))

        # the audit holds counts, never an identifier: no profile id, hash or seed_id anywhere in its bytes
        out = tmp_path / "seed_exports.csv"
        con.execute(f"COPY audit.seed_exports TO '{out}' (HEADER)")
    audit_bytes = out.read_bytes()
    assert audit_bytes.count(b"\n") == 5  # header, two agreements x (night 1, night 2)
    for secret in [*consenting, *{**acme, **globex}, *(h for v in {**acme, **globex}.values() for h in v[1:] if h), ACME_KEY, GLOBEX_KEY]:
        assert secret.encode() not in audit_bytes


@pytest.mark.slow
@pytest.mark.parametrize("acme_key", [None, "too-short-0123456789"])
def test_a_missing_or_short_key_refuses_that_export_only(acme_key, pipeline_env, audience_api, agreements_dir, tmp_path, s3_server, s3_api,
                                                         monkeypatch):
    settings = load_settings()
    enable_globex_seeds(agreements_dir, settings.outbox_bucket, fmt="csv.gz")
    monkeypatch.setenv("AIRFLOW_VAR_SEED_SECRET_GLOBEX", GLOBEX_KEY)
    if acme_key is None:
        monkeypatch.delenv("AIRFLOW_VAR_SEED_SECRET_ACME_BANK")
    else:
        monkeypatch.setenv("AIRFLOW_VAR_SEED_SECRET_ACME_BANK", acme_key)
    assert "AIRFLOW_VAR_SEED_SECRET_ACME_BANK" not in os.environ or len(os.environ["AIRFLOW_VAR_SEED_SECRET_ACME_BANK"]) < 32
    scenario(tmp_path, s3_server)
    run_night(D1, "night-1")  # the night itself does not fail

    assert objects(s3_api, "acme_bank") == {}  # nothing of acme's seed set is sent
    check_set(objects(s3_api, "globex_retail"), D1, expected("globex_retail", GLOBEX_KEY), "globex_retail", "csv.gz")
    with warehouse(settings, read_only=True) as con:
        rows = con.execute("SELECT partner_id, status, seeds_sent, location, details->>'reason' FROM audit.seed_exports ORDER BY 1").fetchall()
        assert con.execute("SELECT DISTINCT partner_id FROM raw.issued_seeds").fetchall() == [("globex_retail",)]
    (partner, status, sent, location, reason), globex_row = rows
    assert (partner, status, sent, location) == ("acme_bank", "refused", 0, None)
    assert globex_row[:2] == ("globex_retail", "sent")
    # the run report shows the refusal and the reason beside the other partner's sent set
    from partner_pipeline import run_report

    page = run_report.write_report(D1, "night-1")
    text = (settings.reports_dir / f"{D1}.html").read_text()
    assert page["report"] and "<h2>Seed sets</h2>" in text
    assert "<tr data-partner='acme_bank' data-status='refused'>" in text and "airflow variables set seed_secret_acme_bank" in text
    assert "<tr data-partner='globex_retail' data-status='sent'>" in text and f"s3://{settings.outbox_bucket}/globex/seeds/{D1}/" in text
    found = "is not set" if acme_key is None else f"has {len(acme_key)} characters, fewer than 32"
    assert "agreement acme-2026-01 (partner acme_bank)" in reason and f"'seed_secret_acme_bank' (agreement field seed_set.secret_variable), {found}" in reason
    assert "airflow variables set seed_secret_acme_bank" in reason and "AIRFLOW_VAR_SEED_SECRET_ACME_BANK" in reason


@pytest.mark.slow
def test_a_failed_export_is_recorded_the_others_still_sent_and_the_task_retries(built, warehouse_copy, agreements_dir, s3_api,
                                                                               monkeypatch):
    """An outbox that cannot be written (an invalid bucket name: object storage refuses it) fails that
    agreement's export: audited as failed, raised after the other agreement's set was sent, so the task retries."""
    from conftest import BUILT_DAY

    settings = warehouse_copy
    enable_globex_seeds(agreements_dir, settings.outbox_bucket, fmt="csv.gz")
    monkeypatch.setenv("AIRFLOW_VAR_SEED_SECRET_GLOBEX", GLOBEX_KEY)
    agreements = load_agreements(agreements_dir)
    agreements["globex_retail"] = agreements["globex_retail"].model_copy(update={"outbox_uri": "s3://bad..bucket/globex/"})
    with warehouse(settings) as con:
        with pytest.raises(seeds.SeedExportFailed, match=r"globex_retail: ClientError: .*InvalidBucketName"):
            seeds.export_seed_sets(con, s3_api, settings, agreements, BUILT_DAY, "run-f")
        rows = con.execute("SELECT partner_id, status, seeds_sent, location FROM audit.seed_exports ORDER BY 1").fetchall()
        issued = dict(con.execute("SELECT partner_id, count(*) FROM raw.issued_seeds GROUP BY 1").fetchall())
    assert rows[1] == ("globex_retail", "failed", 0, f"s3://bad..bucket/globex/seeds/{BUILT_DAY}/")
    assert rows[0][:2] == ("acme_bank", "sent") and rows[0][2] == issued["acme_bank"] > 1000
    assert sorted(objects(s3_api, "acme_bank")) == [f"{BUILT_DAY}/_SUCCESS", f"{BUILT_DAY}/manifest.json", f"{BUILT_DAY}/seeds.csv.gz"]


@pytest.mark.slow
def test_a_rerun_in_another_format_leaves_only_the_new_set(built, warehouse_copy, agreements_dir, s3_api):
    """The agreement's seed_set.format changed between two runs of one date: the folder then holds only
    the new file (the earlier run's csv.gz held the same people's hashes), and the deletion is audited."""
    from conftest import BUILT_DAY

    settings = warehouse_copy
    agreements = load_agreements(agreements_dir)
    with warehouse(settings) as con:
        seeds.export_seed_sets(con, s3_api, settings, agreements, BUILT_DAY, "run-1")
        assert sorted(objects(s3_api, "acme_bank")) == [f"{BUILT_DAY}/_SUCCESS", f"{BUILT_DAY}/manifest.json", f"{BUILT_DAY}/seeds.csv.gz"]
        acme = agreements["acme_bank"]
        agreements["acme_bank"] = acme.model_copy(update={"seed_set": acme.seed_set.model_copy(update={"format": "parquet"})})
        [result] = seeds.export_seed_sets(con, s3_api, settings, agreements, BUILT_DAY, "run-2")
        deletions = con.execute("SELECT reason, location, partner_id, drop_date, rows FROM audit.data_deletions").fetchall()
    found = objects(s3_api, "acme_bank")
    assert sorted(found) == [f"{BUILT_DAY}/_SUCCESS", f"{BUILT_DAY}/manifest.json", f"{BUILT_DAY}/seeds.parquet"]
    manifest = json.loads(found[f"{BUILT_DAY}/manifest.json"])
    assert [f["key"] for f in manifest["files"]] == ["seeds.parquet"] and len(seed_rows(found, BUILT_DAY)) == result["seeds_sent"] > 1000
    assert deletions == [("superseded", f"s3://{settings.outbox_bucket}/acme_bank/seeds/{BUILT_DAY}/", "acme_bank", BUILT_DAY, 1)]
