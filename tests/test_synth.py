"""The synthetic data generator: byte-for-byte determinism, manifests that match their files,
ground truth recounted independently from the written files (a validator and a matcher written
here from the contract's text), the contract's published hash vectors, every drop-level
corruption, and the upload to a real S3 server on loopback."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from partner_pipeline.agreements import HASH_PROFILES, load_agreements, special_category_term
from partner_pipeline.storage import list_objects, read_bytes, s3_client
from partner_pipeline_dev import synth
from partner_pipeline_dev.local_s3 import local_s3

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]
AGREEMENTS = load_agreements(PROJECT / "include" / "agreements")
ACME, GLOBEX = AGREEMENTS["acme_bank"], AGREEMENTS["globex_retail"]
DATE = dt.date(2026, 11, 21)
N_PROFILES = 3000
ROWS = 1200
SEED = 7
LANDING, FIRST_PARTY = "landing", "first-party"

# --- an independent reading of the contract (spec "Hash profiles", "Row validity") ------------

HEX64 = re.compile(r"[0-9a-f]{64}")
TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
INTEGER = re.compile(r"-?\d+")
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def ref_email(raw: str, profile: str) -> str | None:
    s = re.sub(r"\s", "", raw) if profile == "google" else raw.strip(" \t")
    s = s.lower()
    m = re.fullmatch(r"([^@\s]+)@([^@\s]+\.[^@\s]+)", s)
    if not m:
        return None
    local, domain = m.groups()
    gmail_like = domain in ("gmail.com", "googlemail.com")
    if profile == "canonical" and gmail_like:
        local, domain = local.split("+", 1)[0].replace(".", ""), "gmail.com"
    elif profile == "uid2" and domain == "gmail.com":
        local = local.split("+", 1)[0].replace(".", "")
    elif profile == "google" and gmail_like:
        local = local.replace(".", "")
    return f"{local}@{domain}"


def ref_phone(raw: str, profile: str, default_cc: str) -> str | None:
    if not raw:
        return None
    digits = re.sub(r"\D", "", raw)
    if not raw.strip().startswith("+"):
        digits = default_cc + digits
    return digits if profile == "basic" else "+" + digits


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def row_problems(frame: pd.DataFrame, agreement, delivered_at: dt.datetime) -> list[list[str]]:
    """Every rule each row breaks; frame holds strings, '' for missing (CSV semantics)."""
    ids = Counter(frame["partner_record_id"])
    problems = []
    for row in frame.to_dict("records"):
        broken = []
        rid = row["partner_record_id"]
        if rid == "":
            broken.append("partner_record_id_missing")
        elif ids[rid] > 1:
            broken.append("partner_record_id_duplicate")
        if row["email_sha256"] == "" and row["phone_sha256"] == "":
            broken.append("identifier_missing")
        for col in ("email_sha256", "phone_sha256"):
            if row[col] != "" and not HEX64.fullmatch(row[col]):
                broken.append(f"{col}_malformed")
        for col in ("consent_enrichment", "consent_activation"):
            if row[col] == "":
                broken.append(f"{col}_missing")
            elif row[col] not in ("true", "false"):
                broken.append(f"{col}_not_boolean")
        ts = row["consent_ts"]
        if ts == "":
            broken.append("consent_ts_missing")
        else:
            try:
                assert TS.fullmatch(ts)
                when = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
            except (AssertionError, ValueError):
                broken.append("consent_ts_invalid")
            else:
                if when > delivered_at:
                    broken.append("consent_ts_in_future")
        for name, attr in agreement.attributes.items():
            broken += attribute_problems(name, attr, row[name])
        problems.append(broken)
    return problems


def attribute_problems(name: str, attr, value: str) -> list[str]:
    if value == "":
        return [f"{name}_missing"]  # never generated; would show up as an unexpected rule
    if attr.type == "string":
        return [f"{name}_not_allowed"] if attr.allowed_values and value not in attr.allowed_values else []
    if attr.type == "boolean":
        return [] if value in ("true", "false") else [f"{name}_wrong_type"]
    if attr.type == "date":
        try:
            assert ISO_DATE.fullmatch(value)
            dt.date.fromisoformat(value)
            return []
        except (AssertionError, ValueError):
            return [f"{name}_wrong_type"]
    try:
        assert attr.type == "number" or INTEGER.fullmatch(value)
        number = float(value)
        assert number == number and abs(number) != float("inf")
    except (AssertionError, ValueError):
        return [f"{name}_wrong_type"]
    if (attr.min is not None and number < attr.min) or (attr.max is not None and number > attr.max):
        return [f"{name}_out_of_range"]
    return []


def as_text(value) -> str:
    """A Parquet value as the CSV text the contract expects."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def read_file(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        return pd.DataFrame({c: [as_text(v) for v in table.column(c).to_pylist()] for c in table.column_names})
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")


def read_drop(root: Path, truth: dict) -> pd.DataFrame:
    folder = root / truth["bucket"] / truth["prefix"]
    frames = []
    for entry in truth["manifest_files"]:
        frame = read_file(folder / entry["key"])
        frames.append(frame.assign(_file=entry["key"], _row=range(1, len(frame) + 1)))
    return pd.concat(frames, ignore_index=True)


def read_profiles(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / FIRST_PARTY / "profiles" / DATE.isoformat() / "profiles-000.csv.gz",
                       dtype=str, keep_default_na=False)


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def delivered(truth: dict) -> dt.datetime:
    return dt.datetime.strptime(truth["delivered_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


# --- fixtures ---------------------------------------------------------------------------------


def make_scenario(root: Path, file_format: str = "csv.gz", seed: int = SEED) -> dict:
    return synth.generate_scenario(
        root, landing_bucket=LANDING, first_party_bucket=FIRST_PARTY, agreements=AGREEMENTS, drop_date=DATE,
        n_profiles=N_PROFILES, rows_per_partner=ROWS, seed=seed, bad_row_share=0.1, file_format=file_format, files=2,
    )


@pytest.fixture(scope="module")
def csv_scenario(tmp_path_factory):
    root = tmp_path_factory.mktemp("csv")
    return root, make_scenario(root)


@pytest.fixture(scope="module")
def parquet_scenario(tmp_path_factory):
    root = tmp_path_factory.mktemp("parquet")
    return root, make_scenario(root, "parquet")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with local_s3(tmp_path_factory.mktemp("s3")) as server:  # no buckets: upload_tree must create them
        yield server


@pytest.fixture(params=["csv_scenario", "parquet_scenario"])
def scenario(request):
    return request.getfixturevalue(request.param)


# --- hashes -----------------------------------------------------------------------------------

VECTORS = [
    ("user@example.com", ("canonical", "uid2"), "user@example.com", "b4c9a289323b21a01c3e940f150eb9b8c542587f1abfd8f0e1cc1ffc5e475514"),
    ("JANE.SAOIRSE@gmail.com", ("canonical", "uid2"), "janesaoirse@gmail.com", "92ee26057ed9dea2535d6c8b141d48373932476599196e00352254896db5888f"),
    ("JaneSaoirse+Work@gmail.com", ("canonical", "uid2"), "janesaoirse@gmail.com", "92ee26057ed9dea2535d6c8b141d48373932476599196e00352254896db5888f"),
    ("JaneSaoirse+Work@example.com", ("canonical", "uid2"), "janesaoirse+work@example.com", "28aaee4815230cd3b4ebd88c515226550666e91ac019929e3adac3f66c288180"),
    (" John_Smith@gmail.com ", ("basic", "canonical"), "john_smith@gmail.com", "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"),
]


@pytest.mark.parametrize("raw, profiles, normalized, digest", VECTORS)
def test_published_email_vectors(raw, profiles, normalized, digest):
    for profile in profiles:
        assert ref_email(raw, profile) == normalized  # the test's own reading of the spec
        # a person whose base is `normalized` gets exactly the published hash from the generator
        assert synth.partner_hashes(normalized, None, profile) == (digest, None)


def test_published_phone_vector():
    assert ref_phone("(650)555-1212", "basic", "1") == "16505551212"
    digest = "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"
    assert synth.partner_hashes(None, "16505551212", "basic") == (None, digest)
    assert synth.partner_hashes(None, "16505551212", "canonical")[1] == sha("+16505551212")


def test_rows_carry_the_hash_of_the_persons_base_identity(csv_scenario):
    root, truth = csv_scenario
    for drop in truth["drops"].values():
        rows = read_drop(root, drop).set_index("partner_record_id")
        links = drop["expected_links"]
        people = synth.describe_persons(SEED, [int(link["profile_id"][1:]) - 1 for link in links]).to_pylist()
        assert len(links) > 500
        for link, person in zip(links, people):
            row = rows.loc[link["partner_record_id"]]
            email, phone = synth.partner_hashes(person["base_email"], person["base_phone"], drop["hash_profile"])
            assert row["email_sha256"] in ("", email) and row["phone_sha256"] in ("", phone)
            assert row[f"{link['via']}_sha256"] == {"email": email, "phone": phone}[link["via"]]


# --- profiles ---------------------------------------------------------------------------------


def test_profiles_raw_identities_and_sensitivity_truth(csv_scenario):
    root, truth = csv_scenario
    profiles = read_profiles(root)
    people = synth.describe_persons(SEED, range(N_PROFILES)).to_pandas()
    assert list(profiles.columns) == list(synth.PROFILE_COLUMNS)
    assert len(profiles) == N_PROFILES and profiles["profile_id"].is_unique
    assert (profiles["profile_id"] == people["profile_id"]).all() and profiles["profile_id"][0] == "p0000000001"
    assert (profiles["email"] == people["raw_email"]).all()
    bases = people["base_email"]
    assert bases.is_unique and people["base_phone"].is_unique
    for base in bases:  # a base is normalized under every profile
        assert all(ref_email(base, p) == base for p in HASH_PROFILES)
        assert not base.endswith("@googlemail.com")
    not_normalizing = Counter()
    for raw, base, variant in zip(profiles["email"], bases, people["email_variant"]):
        for profile in HASH_PROFILES:
            ok = ref_email(raw, profile) == base
            assert ok == bool(synth.email_normalizes_to_base(synth_variant(variant), profile)), (raw, profile)
            not_normalizing[profile] += not ok
    sensitive = truth["profiles"]["profile_sensitive_emails"]
    assert sensitive["not_normalizing_to_base"] == {p: not_normalizing[p] for p in HASH_PROFILES}
    assert sensitive["total"] == not_normalizing["basic"] > 100
    assert all(count > 0 for count in sensitive["by_variant"].values())
    listed = {p["profile_id"]: p["variant"] for p in truth["profiles"]["sensitive_profiles"]}
    assert listed == dict(zip(people["profile_id"][people["email_variant"] != "none"], people["email_variant"][people["email_variant"] != "none"]))
    # noise every profile removes is there too
    assert profiles["email"].str.contains(r"[A-Z]").mean() > 0.2
    assert profiles["email"].str.match(r"^\s|.*\s$").sum() > 0


def synth_variant(name: str) -> int:
    bits = {"dots": synth.DOTS, "plus_tag": synth.PLUS_TAG, "googlemail": synth.GOOGLEMAIL}
    return sum(bits[part] for part in name.split("+")) if name != "none" else 0


def test_profile_phones_use_the_listed_formats(csv_scenario):
    root, truth = csv_scenario
    profiles = read_profiles(root)
    formats = {
        r"\(\d{3}\) \d{3}-\d{4}": 0, r"\d{3}-\d{3}-\d{4}": 0, r"\+1 \d{3} \d{3} \d{4}": 0, r"\+1\d{10}": 0,
        r"\d{10}": 0, r"\+(44|49) \d{3} \d{3} \d{4}": 0, r"\+(44|49)\d{10}": 0, "": 0,
    }
    for phone in profiles["phone"]:
        matching = [f for f in formats if re.fullmatch(f, phone)]
        assert len(matching) == 1, phone
        formats[matching[0]] += 1
    assert all(formats.values()), formats
    assert formats[""] == truth["profiles"]["phone_null"]
    assert set(profiles["country"]) == {"US", "CA", "GB", "DE"}
    assert set(profiles["consent_marketing"]) == {"true", "false"}


# --- drops: manifest and ground truth ---------------------------------------------------------


def test_manifests_match_the_files(scenario):
    root, truth = scenario
    assert set(truth["drops"]) == {"acme_bank/2026-11-21", "globex_retail/2026-11-21"}
    for drop in truth["drops"].values():
        folder = root / LANDING / drop["prefix"]
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest == {
            "partner_id": drop["partner_id"], "agreement_id": AGREEMENTS[drop["partner_id"]].agreement_id,
            "drop_date": "2026-11-21", "schema_version": 1, "files": drop["manifest_files"],
            "record_count": ROWS,
        }
        assert [f["key"] for f in manifest["files"]] == [f"records-000.{drop['file_format']}", f"records-001.{drop['file_format']}"]
        for entry in manifest["files"]:
            assert hashlib.sha256((folder / entry["key"]).read_bytes()).hexdigest() == entry["sha256"]
            assert len(read_file(folder / entry["key"])) == entry["rows"]
        assert sum(f["rows"] for f in manifest["files"]) == manifest["record_count"]
        assert (folder / "_SUCCESS").read_bytes() == b""
        assert sorted(p.name for p in folder.iterdir()) == ["_SUCCESS", "manifest.json", *(f["key"] for f in manifest["files"])]


def test_ground_truth_recounted_from_the_files(scenario):
    root, truth = scenario
    for drop in truth["drops"].values():
        agreement = AGREEMENTS[drop["partner_id"]]
        rows = read_drop(root, drop)
        assert list(rows.columns[:-2]) == [*synth.drop_columns(synth.DropSpec(agreement, DATE, 1))]
        problems = row_problems(rows, agreement, delivered(drop))
        assert all(len(p) <= 1 for p in problems), "each bad row breaks exactly one rule"
        counted = Counter(p[0] for p in problems if p)
        assert drop["rows_total"] == len(rows) == ROWS
        assert drop["invalid_by_rule"] == dict(counted)
        assert drop["rows_invalid"] == sum(counted.values()) == round(ROWS * 0.1)
        assert drop["rows_valid"] == ROWS - drop["rows_invalid"]
        expected_rules = set(synth.row_rules(agreement, drop["file_format"]))
        assert set(counted) <= expected_rules and len(counted) >= len(expected_rules) - 2
        if drop["file_format"] == "parquet":
            assert not {r for r in counted if r.endswith(("_not_boolean", "_wrong_type", "_invalid"))}
        bad = [{"file": f, "row": r, "partner_record_id": rid or None, "rule": p[0]}
               for f, r, rid, p in zip(rows["_file"], rows["_row"], rows["partner_record_id"], problems) if p]
        assert drop["bad_rows"] == sorted(bad, key=lambda b: (b["file"], b["row"]))
        # sanity of the independent checks on the simplest rules
        assert counted["partner_record_id_duplicate"] == rows["partner_record_id"][rows["partner_record_id"] != ""].duplicated(keep=False).sum()
        upper = rows["email_sha256"].str.fullmatch(r"[0-9A-F]{64}") & rows["email_sha256"].str.contains(r"[A-F]")
        assert upper.sum() >= 1 and upper.sum() <= counted["email_sha256_malformed"]

        valid = rows[[not p for p in problems]]
        assert drop["rows_consented"] == (valid["consent_enrichment"] == "true").sum()
        assert 0.04 < (valid["consent_enrichment"] == "false").mean() < 0.16
        assert 0.24 < (valid["consent_activation"] == "false").mean() < 0.36
        assert valid["partner_person_id"].is_unique and rows["partner_person_id"].is_unique
        assert (rows["email_sha256"] == "").sum() > 50 and (rows["phone_sha256"] == "").sum() > 50
        assert drop["expected_status"] == ("rejected" if agreement.max_bad_row_share < 0.1 else "loaded")


def recount_matches(root: Path, truth: dict) -> list[tuple[dict, dict, dict, list]]:
    """Each drop's matches recounted with the test's own normalizer and the resolution rule (a
    record whose partner person also hits another profile, or whose profile another partner person
    hits, is ambiguous): (drop, counts, consented counts, links) per drop."""
    profiles = read_profiles(root)
    recounted = []
    for drop in truth["drops"].values():
        agreement = AGREEMENTS[drop["partner_id"]]
        hp, cc = agreement.hash_profile, agreement.default_country_code
        by_email = {sha(ref_email(e, hp)): pid for e, pid in zip(profiles["email"], profiles["profile_id"])}
        by_phone = {sha(ref_phone(p, hp, cc)): pid for p, pid in zip(profiles["phone"], profiles["profile_id"]) if p}
        assert len(by_email) == len(profiles) and len(by_phone) == (profiles["phone"] != "").sum()
        rows = read_drop(root, drop)
        problems = row_problems(rows, agreement, delivered(drop))
        hits = []
        for row, problem in zip(rows.to_dict("records"), problems):
            if problem:
                continue
            if row["email_sha256"] in by_email:
                hits.append((row, "email", by_email[row["email_sha256"]]))
            elif row["phone_sha256"] in by_phone:
                hits.append((row, "phone", by_phone[row["phone_sha256"]]))
            else:
                hits.append((row, "unmatched", None))
        profiles_of, persons_of = {}, {}
        for row, _, pid in hits:
            if pid:
                profiles_of.setdefault(row["partner_person_id"], set()).add(pid)
                persons_of.setdefault(pid, set()).add(row["partner_person_id"])
        counts = {"": Counter(), "consented": Counter()}
        links = []
        for row, via, pid in hits:
            if pid and (len(profiles_of[row["partner_person_id"]]) > 1 or len(persons_of[pid]) > 1):
                via, pid = "ambiguous", None
            key = "by_" + via if pid else via
            consented = row["consent_enrichment"] == "true"
            counts[""][key] += 1
            if consented:
                counts["consented"][key] += 1
            if pid:
                links.append({"partner_record_id": row["partner_record_id"], "profile_id": pid, "via": via, "consented": consented})
        recounted.append((drop, counts[""], counts["consented"], links))
    return recounted


MATCH_KEYS = ("by_email", "by_phone", "ambiguous", "unmatched")


def test_expected_matches_recounted_against_the_profiles(scenario):
    """Hash every profile's raw email/phone with the test's own normalizer and match."""
    root, truth = scenario
    for drop, counts, consented, links in recount_matches(root, truth):
        assert drop["expected_matches"] == {k: counts[k] for k in MATCH_KEYS}
        assert drop["expected_matches_consented"] == {k: consented[k] for k in MATCH_KEYS}
        assert drop["expected_links"] == links
        assert drop["expected_matches"]["ambiguous"] == 0
        assert all(drop["expected_matches"][k] > 20 for k in ("by_email", "by_phone", "unmatched"))


def test_ambiguous_pairs_recounted_against_the_profiles(tmp_path):
    """ambiguous_share: pairs of matching persons under one partner_person_id, each pair ambiguous
    by the resolution rule, and the enrichment and segments truth built without them."""
    truth = synth.generate_scenario(
        tmp_path, landing_bucket=LANDING, first_party_bucket=FIRST_PARTY, agreements=AGREEMENTS, drop_date=DATE,
        n_profiles=N_PROFILES, rows_per_partner=ROWS, seed=SEED, bad_row_share=0.1, files=2, ambiguous_share=0.05)
    plain = synth.generate_scenario(
        tmp_path / "plain", landing_bucket=LANDING, first_party_bucket=FIRST_PARTY, agreements=AGREEMENTS, drop_date=DATE,
        n_profiles=N_PROFILES, rows_per_partner=ROWS, seed=SEED, bad_row_share=0.1, files=2)
    for drop, counts, consented, links in recount_matches(tmp_path, truth):
        pairs = plain["drops"][drop["prefix"].rstrip("/")]["expected_matches"]
        assert drop["expected_matches"] == {k: counts[k] for k in MATCH_KEYS}
        assert drop["expected_matches_consented"] == {k: consented[k] for k in MATCH_KEYS}
        assert drop["expected_links"] == links
        # every ambiguous row was a match without the pairs: the rest of the drop is as generated without them
        ambiguous = drop["expected_matches"]["ambiguous"]
        assert ambiguous >= 0.04 * ROWS and ambiguous % 2 == 0
        assert drop["expected_matches"]["unmatched"] == pairs["unmatched"]
        assert (drop["expected_matches"]["by_email"] + drop["expected_matches"]["by_phone"] + ambiguous
                == pairs["by_email"] + pairs["by_phone"])
    assert truth["expected_enriched"] != plain["expected_enriched"]


def test_some_customers_match_only_under_some_hash_profiles(csv_scenario):
    """The uid2 partner misses googlemail customers that a canonical partner would match."""
    root, truth = csv_scenario
    people = synth.describe_persons(SEED, range(N_PROFILES)).to_pandas()
    googlemail = set(people["profile_id"][people["email_variant"].str.contains("googlemail")])
    globex = truth["drops"]["globex_retail/2026-11-21"]
    assert globex["hash_profile"] == "uid2"
    linked = {link["profile_id"]: link["via"] for link in globex["expected_links"]}
    assert not any(linked.get(pid) == "email" for pid in googlemail)


def test_parquet_columns_have_proper_types(parquet_scenario):
    root, truth = parquet_scenario
    drop = truth["drops"]["globex_retail/2026-11-21"]
    schema = pq.read_schema(root / LANDING / drop["prefix"] / "records-000.parquet")
    assert schema.field("consent_enrichment").type == pa.bool_()
    assert schema.field("consent_ts").type == pa.timestamp("us", tz="UTC")
    assert schema.field("purchases_12m").type == pa.int64()
    assert schema.field("churn_risk_score").type == pa.float64()
    assert schema.field("last_purchase_date").type == pa.date32()
    assert schema.field("loyalty_tier").type == pa.string()


# --- determinism ------------------------------------------------------------------------------


def test_same_arguments_give_identical_bytes(tmp_path, csv_scenario, parquet_scenario):
    for (root, truth), file_format in ((csv_scenario, "csv.gz"), (parquet_scenario, "parquet")):
        again = make_scenario(tmp_path / file_format, file_format)
        assert again == truth
        assert all_files(tmp_path / file_format) == all_files(root)
    other = make_scenario(tmp_path / "other-seed", seed=SEED + 1)
    first, second = all_files(csv_scenario[0]), all_files(tmp_path / "other-seed")
    assert first.keys() == second.keys()
    assert all(first[k] != second[k] for k in first if not k.endswith("_SUCCESS"))
    assert other["drops"].keys() == csv_scenario[1]["drops"].keys()


def test_gzip_header_has_no_time_or_name(csv_scenario):
    root, truth = csv_scenario
    data = (root / LANDING / truth["drops"]["acme_bank/2026-11-21"]["prefix"] / "records-000.csv.gz").read_bytes()
    assert data[:4] == b"\x1f\x8b\x08\x00" and data[4:8] == b"\x00\x00\x00\x00"  # no FNAME flag, mtime 0


def test_delivered_at_bounds_consent_ts(tmp_path):
    delivered_at = dt.datetime(2026, 11, 20, 6, 30, tzinfo=dt.UTC)
    spec = synth.DropSpec(ACME, DATE, 300, "csv", bad_row_share=0.2, delivered_at=delivered_at)
    truth = synth.write_drop(tmp_path, LANDING, spec, SEED, 500, SEED)
    rows = read_drop(tmp_path, truth)
    stamps = pd.to_datetime(rows["consent_ts"], format="%Y-%m-%dT%H:%M:%SZ", errors="coerce", utc=True)
    future = [b["row"] for b in truth["bad_rows"] if b["rule"] == "consent_ts_in_future"]
    assert truth["delivered_at"] == "2026-11-20T06:30:00Z" and future
    assert (stamps[rows["_row"].isin(future)].dt.year == 2099).all()
    assert (stamps[~rows["_row"].isin(future)].dropna() < delivered_at).all()


# --- expected enriched profiles and segment sizes --------------------------------------------

# Segment rules (SQL, as in the dbt project's YAML) beside the same rules as Python over one row of
# the brute-force enriched_profiles (None where SQL has NULL; a NULL condition selects nobody).
SEGMENT_RULES = {
    "homeowners": ("acme_bank__household_income >= 150000 and acme_bank__recent_mortgage\n"
                   "and not acme_bank__has_financial_advisor",
                   lambda r: r["acme_bank__household_income"] is not None and r["acme_bank__household_income"] >= 150000
                   and r["acme_bank__recent_mortgage"] is True and r["acme_bank__has_financial_advisor"] is False),
    "wealthy": ("acme_bank__net_worth_band in ('500k_1m', 'over_1m')",
                lambda r: r["acme_bank__net_worth_band"] in ("500k_1m", "over_1m")),
    "upsell": ("tier = 'standard' and globex_retail__loyalty_tier in ('gold', 'platinum')",
               lambda r: r["tier"] == "standard" and r["globex_retail__loyalty_tier"] in ("gold", "platinum")),
    "attrition": ("globex_retail__churn_risk_score >= 0.7 and lifetime_value >= 500",
                  lambda r: r["globex_retail__churn_risk_score"] is not None and r["globex_retail__churn_risk_score"] >= 0.7
                  and r["lifetime_value"] >= 500),
    "recent_big_buyers": ("globex_retail__last_purchase_date >= DATE '2026-06-01' and globex_retail__purchases_12m > 100",
                          lambda r: r["globex_retail__last_purchase_date"] is not None
                          and r["globex_retail__last_purchase_date"] >= dt.date(2026, 6, 1)
                          and r["globex_retail__purchases_12m"] > 100),
    "both_partners": ("acme_bank__recent_mortgage is not null and globex_retail__loyalty_tier is not null",
                      lambda r: r["acme_bank__recent_mortgage"] is not None and r["globex_retail__loyalty_tier"] is not None),
    "not_by_acme": ("acme_bank__household_income is null", lambda r: r["acme_bank__household_income"] is None),
    "gb_marketable_veterans": ("country = 'GB' and has_consent_marketing and customer_since < DATE '2016-01-01'",
                               lambda r: r["country"] == "GB" and r["has_consent_marketing"]
                               and r["customer_since"] < dt.date(2016, 1, 1)),
    "premium": ("tier = 'premium'", lambda r: r["tier"] == "premium"),
    "by_globex": ("list_contains(enriched_by_partners, 'globex_retail')", lambda r: "globex_retail" in r["enriched_by_partners"]),
}


def write_segments_yml(path: Path, rules: dict[str, str]) -> Path:
    """A segments YAML laid out as the dbt project's (models/marts/_segments.yml)."""
    segments = [{"name": name, "rule": rule, "destinations": ["crm_email"]} for name, rule in rules.items()]
    models = [{"name": "not_segments", "description": "ignored: not segment_membership"},
              {"name": "segment_membership", "config": {"meta": {"segments": segments}}}]
    path.write_text(yaml.safe_dump({"version": 2, "models": models}, sort_keys=False), encoding="utf-8")
    return path


def segment_scenario(root: Path, segments_yml: Path, file_format: str, seed: int = SEED, extra_drops=()) -> dict:
    # 3% bad rows: under both agreements' max_bad_row_share, so both drops load
    return synth.generate_scenario(
        root, landing_bucket=LANDING, first_party_bucket=FIRST_PARTY, agreements=AGREEMENTS, drop_date=DATE,
        n_profiles=N_PROFILES, rows_per_partner=ROWS, seed=seed, bad_row_share=0.03, file_format=file_format, files=2,
        extra_drops=extra_drops, segments_yml=segments_yml)


@pytest.fixture(scope="module")
def segments_yml(tmp_path_factory):
    return write_segments_yml(tmp_path_factory.mktemp("segments") / "_segments.yml",
                              {name: sql for name, (sql, _) in SEGMENT_RULES.items()})


@pytest.fixture(scope="module", params=["csv.gz", "parquet"])
def segment_case(request, tmp_path_factory, segments_yml):
    root = tmp_path_factory.mktemp("segments-" + request.param.replace(".", "-"))
    return root, segment_scenario(root, segments_yml, request.param)


def typed_value(attr, text: str):
    if attr.type in ("integer", "number"):
        return float(text)
    if attr.type == "boolean":
        return {"true": True, "false": False}[text]
    return dt.date.fromisoformat(text) if attr.type == "date" else text


def brute_force_enriched_profiles(root: Path, truth: dict) -> list[dict]:
    """enriched_profiles rebuilt from the written files, the bad_rows list and expected_links."""
    profiles = read_profiles(root)
    table = {pid: {"profile_id": pid, "country": country.strip().upper(), "has_consent_marketing": consent == "true",
                   "customer_since": dt.date.fromisoformat(since), "lifetime_value": float(value), "tier": tier,
                   **{f"{p}__{a}": None for p in AGREEMENTS for a in AGREEMENTS[p].attributes}, "enriched_by_partners": []}
             for pid, country, consent, since, value, tier in zip(
                 profiles["profile_id"], profiles["country"], profiles["consent_marketing"], profiles["customer_since"],
                 profiles["lifetime_value"], profiles["tier"])}
    for drop in truth["drops"].values():
        if drop["expected_status"] not in ("loaded", "loaded_flagged"):
            continue
        agreement = AGREEMENTS[drop["partner_id"]]
        rows = read_drop(root, drop)
        bad = {(b["file"], b["row"]) for b in drop["bad_rows"]}
        rows = rows[[(f, r) not in bad for f, r in zip(rows["_file"], rows["_row"])]]
        assert len(rows) == drop["rows_valid"]
        links = {link["partner_record_id"]: link for link in drop["expected_links"]}
        linked = set()
        for row in rows.to_dict("records"):
            link = links.get(row["partner_record_id"])
            if link is None or not link["consented"]:
                continue
            if "consent_activation" in agreement.required_consents and row["consent_activation"] != "true":
                continue
            assert link["profile_id"] not in linked, "the generator makes no ambiguous links"
            linked.add(link["profile_id"])
            profile = table[link["profile_id"]]
            for name, attr in agreement.attributes.items():
                profile[f"{agreement.partner_id}__{name}"] = typed_value(attr, row[name])
            profile["enriched_by_partners"] = sorted([*profile["enriched_by_partners"], agreement.partner_id])
    return list(table.values())


def test_segment_sizes_recounted_from_the_files(segment_case):
    root, truth = segment_case
    assert {d["expected_status"] for d in truth["drops"].values()} == {"loaded"}
    enriched = brute_force_enriched_profiles(root, truth)
    assert truth["expected_enriched"] == {p: sum(p in r["enriched_by_partners"] for r in enriched) for p in AGREEMENTS}
    assert all(500 < n < N_PROFILES for n in truth["expected_enriched"].values())
    expected = {name: sum(1 for r in enriched if rule(r)) for name, (_, rule) in SEGMENT_RULES.items()}
    assert truth["segments"] == expected
    assert all(count > 5 for count in expected.values()), expected
    assert expected["not_by_acme"] == N_PROFILES - truth["expected_enriched"]["acme_bank"]
    assert expected["by_globex"] == truth["expected_enriched"]["globex_retail"]
    on_disk = json.loads((root / "ground_truth.json").read_text())
    assert on_disk["segments"] == truth["segments"] and on_disk["expected_enriched"] == truth["expected_enriched"]


def test_first_party_rule_counts_the_profiles_file(segment_case):
    root, truth = segment_case
    profiles = read_profiles(root)
    assert truth["segments"]["premium"] == (profiles["tier"] == "premium").sum() > 100


def test_segment_sizes_are_deterministic(tmp_path, segment_case, segments_yml):
    root, truth = segment_case
    file_format = truth["drops"]["acme_bank/2026-11-21"]["file_format"]
    again = segment_scenario(tmp_path / "again", segments_yml, file_format)
    assert again["segments"] == truth["segments"] and again["expected_enriched"] == truth["expected_enriched"]
    other = segment_scenario(tmp_path / "other", segments_yml, file_format, seed=SEED + 1)
    assert other["segments"] != truth["segments"]


def test_drops_that_do_not_load_or_have_expired_enrich_nobody(tmp_path, segments_yml):
    base = segment_scenario(tmp_path / "base", segments_yml, "csv")
    extra = (
        synth.DropSpec(ACME, DATE - dt.timedelta(days=1), 300, "csv", corruption="checksum_mismatch"),  # rejected
        synth.DropSpec(GLOBEX, DATE - dt.timedelta(days=2), 300, "csv", corruption="missing_success"),  # incomplete
        synth.DropSpec(GLOBEX, DATE - dt.timedelta(days=GLOBEX.retention_days), 300, "csv"),  # loaded, past retention
        synth.DropSpec(ACME, DATE, 300, "csv", partner_id="initech_media"),  # no agreement: rejected
        synth.DropSpec(ACME, DATE + dt.timedelta(days=1), 300, "csv"),  # for a later run
    )
    truth = segment_scenario(tmp_path / "extra", segments_yml, "csv", extra_drops=extra)
    assert [d["expected_status"] for d in truth["drops"].values()][2:] == ["rejected", "incomplete", "loaded", "rejected", "loaded"]
    assert truth["segments"] == base["segments"] and truth["expected_enriched"] == base["expected_enriched"]
    # an earlier drop within retention does add profiles (those the newer drop does not mention)
    earlier = (synth.DropSpec(GLOBEX, DATE - dt.timedelta(days=GLOBEX.retention_days - 1), 300, "csv"),)
    more = segment_scenario(tmp_path / "earlier", segments_yml, "csv", extra_drops=earlier)
    assert more["expected_enriched"]["globex_retail"] > base["expected_enriched"]["globex_retail"]
    assert more["expected_enriched"]["acme_bank"] == base["expected_enriched"]["acme_bank"]


def test_default_segments_are_the_dbt_projects(csv_scenario):
    _, truth = csv_scenario
    assert set(truth["segments"]) == set(synth.load_segment_rules()) and truth["segments"]
    assert truth["drops"]["acme_bank/2026-11-21"]["expected_status"] == "rejected"  # 10% bad rows: acme enriches nobody
    assert truth["expected_enriched"]["acme_bank"] == 0 < truth["expected_enriched"]["globex_retail"]


def test_bad_segment_rules_are_refused(tmp_path):
    small = dict(landing_bucket=LANDING, first_party_bucket=FIRST_PARTY, agreements=AGREEMENTS, drop_date=DATE,
                 n_profiles=50, rows_per_partner=20, seed=SEED)
    unknown = write_segments_yml(tmp_path / "unknown.yml", {"typo": "acme_bank__household_incme > 1"})
    with pytest.raises(ValueError, match="segment typo"):
        synth.generate_scenario(tmp_path / "a", segments_yml=unknown, **small)
    (tmp_path / "norule.yml").write_text(
        "version: 2\nmodels:\n  - name: segment_membership\n    config: {meta: {segments: [{name: empty}]}}\n")
    with pytest.raises(ValueError, match="segment empty needs a rule"):
        synth.generate_scenario(tmp_path / "b", segments_yml=tmp_path / "norule.yml", **small)
    assert not (tmp_path / "b").exists()  # refused before anything is written


# --- drop-level corruptions -------------------------------------------------------------------


def corrupt_drop(root: Path, corruption: str, file_format: str = "csv.gz", files: int = 1, **kw) -> tuple[Path, dict]:
    spec = synth.DropSpec(kw.pop("agreement", ACME), DATE, 60, file_format, files, corruption=corruption, **kw)
    truth = synth.write_drop(root, LANDING, spec, SEED, 200, SEED)
    return root / LANDING / spec.prefix, truth


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_checksum_mismatch(tmp_path):
    folder, truth = corrupt_drop(tmp_path, "checksum_mismatch")
    entry = manifest_of(folder)["files"][0]
    assert hashlib.sha256((folder / entry["key"]).read_bytes()).hexdigest() != entry["sha256"]
    assert len(read_file(folder / entry["key"])) == entry["rows"] == 60
    assert (truth["expected_status"], truth["expected_reason"]) == ("rejected", "checksum_mismatch")


def test_row_count_mismatch(tmp_path):
    folder, _ = corrupt_drop(tmp_path, "row_count_mismatch", files=2)
    manifest = manifest_of(folder)
    first, second = manifest["files"]
    assert first["rows"] == len(read_file(folder / first["key"])) + 1
    assert second["rows"] == len(read_file(folder / second["key"]))
    assert manifest["record_count"] == first["rows"] + second["rows"] == 61
    assert hashlib.sha256((folder / first["key"]).read_bytes()).hexdigest() == first["sha256"]


def test_missing_success(tmp_path):
    folder, truth = corrupt_drop(tmp_path, "missing_success")
    assert not (folder / "_SUCCESS").exists() and (folder / "manifest.json").exists()
    assert truth["expected_status"] == "incomplete"


def test_key_outside_prefix(tmp_path):
    folder, _ = corrupt_drop(tmp_path, "key_outside_prefix")
    entry = manifest_of(folder)["files"][0]
    assert entry["key"] == "../other_partner/2026-11-21/records-000.csv.gz"
    # the key is relative to the drop prefix acme_bank/2026-11-21/, so it resolves one level up
    outside = tmp_path / LANDING / "acme_bank" / "other_partner" / "2026-11-21" / "records-000.csv.gz"
    assert hashlib.sha256(outside.read_bytes()).hexdigest() == entry["sha256"]
    assert not (folder / "records-000.csv.gz").exists()


def test_manifest_mismatch(tmp_path):
    folder, _ = corrupt_drop(tmp_path, "manifest_mismatch")
    manifest = manifest_of(folder)
    assert manifest["agreement_id"] != ACME.agreement_id and manifest["partner_id"] == "acme_bank"


@pytest.mark.parametrize("corruption, column", [("extra_column", "favourite_colour"), ("special_category_column", "health_condition")])
def test_extra_columns(tmp_path, corruption, column):
    folder, truth = corrupt_drop(tmp_path, corruption, bad_row_share=0.0)
    rows = read_file(folder / "records-000.csv.gz")
    assert list(rows.columns) == [*synth.drop_columns(synth.DropSpec(ACME, DATE, 1)), column]
    assert (rows[column] != "").all()
    assert not any(row_problems(rows, ACME, delivered(truth)))
    assert (special_category_term(column) is not None) == (corruption == "special_category_column")
    assert truth["expected_status"] == {"extra_column": "loaded_flagged", "special_category_column": "rejected"}[corruption]


@pytest.mark.parametrize("file_format", ["csv.gz", "parquet"])
def test_empty_drop(tmp_path, file_format):
    folder, truth = corrupt_drop(tmp_path, "empty_drop", file_format)
    manifest = manifest_of(folder)
    assert manifest["record_count"] == 0 and [f["rows"] for f in manifest["files"]] == [0]
    path = folder / manifest["files"][0]["key"]
    if file_format == "csv.gz":
        assert gzip.decompress(path.read_bytes()).decode() == ",".join(synth.drop_columns(synth.DropSpec(ACME, DATE, 1))) + "\n"
    else:
        assert pq.read_table(path).num_rows == 0
    assert truth["rows_total"] == 0 and truth["expected_status"] == "loaded"


def test_csv_quirks_stay_valid(tmp_path):
    folder, truth = corrupt_drop(tmp_path, "csv_quirks", "csv", bad_row_share=0.0)
    data = (folder / "records-000.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbfpartner_record_id,")
    rows = read_file(folder / "records-000.csv")
    assert len(rows) == manifest_of(folder)["record_count"] == 60 < data.count(b"\n")
    quirky = rows["partner_person_id"][rows["partner_person_id"].str.contains('[",\n]')]
    assert len(quirky) > 3 and quirky.str.contains('"').any() and quirky.str.contains("\n").any()
    assert rows["partner_person_id"].is_unique
    assert not any(row_problems(rows, ACME, delivered(truth)))
    assert truth["rows_valid"] == 60 and truth["expected_status"] == "loaded"


def test_corrupt_gzip(tmp_path):
    folder, _ = corrupt_drop(tmp_path, "corrupt_gzip")
    entry = manifest_of(folder)["files"][0]
    data = (folder / entry["key"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    with pytest.raises((OSError, EOFError, zlib.error)):
        gzip.decompress(data)


def test_parquet_wrong_types(tmp_path):
    folder, _ = corrupt_drop(tmp_path, "parquet_wrong_types", "parquet")
    table = pq.read_table(folder / "records-000.parquet")
    assert table.schema.field("consent_enrichment").type == pa.string()
    assert table.schema.field("household_income").type == pa.string()
    assert set(table.column("consent_enrichment").to_pylist()) <= {"yes", "no", None}
    assert table.schema.field("consent_activation").type == pa.bool_()


def test_missing_file(tmp_path):
    folder, _ = corrupt_drop(tmp_path, "missing_file", files=2)
    keys = [f["key"] for f in manifest_of(folder)["files"]]
    assert keys == ["records-000.csv.gz", "records-001.csv.gz"]
    assert (folder / keys[0]).exists() and not (folder / keys[1]).exists()


def test_unlisted_file(tmp_path):
    folder, truth = corrupt_drop(tmp_path, "unlisted_file")
    assert [f["key"] for f in manifest_of(folder)["files"]] == ["records-000.csv.gz"]
    extra = read_file(folder / "records-001.csv.gz")
    assert len(extra) == synth.UNLISTED_FILE_ROWS and truth["rows_total"] == 60


def test_invalid_manifest_json(tmp_path):
    folder, _ = corrupt_drop(tmp_path, "invalid_manifest_json")
    with pytest.raises(json.JSONDecodeError):
        json.loads((folder / "manifest.json").read_text())


def test_unknown_partner_override(tmp_path):
    folder, truth = corrupt_drop(tmp_path, None, partner_id="mystery_partner")
    assert folder == tmp_path / LANDING / "mystery_partner" / "2026-11-21"
    assert manifest_of(folder)["partner_id"] == "mystery_partner"
    assert (truth["expected_status"], truth["expected_reason"]) == ("rejected", "unknown_partner")


def test_incompatible_specs_are_refused():
    with pytest.raises(ValueError, match="corrupt_gzip"):
        synth.DropSpec(ACME, DATE, 10, "parquet", corruption="corrupt_gzip")
    with pytest.raises(ValueError, match="csv_quirks"):
        synth.DropSpec(ACME, DATE, 10, "parquet", corruption="csv_quirks")
    with pytest.raises(ValueError, match="corruption"):
        synth.DropSpec(ACME, DATE, 10, corruption="gremlins")


# --- upload and CLI ---------------------------------------------------------------------------


class RecordingClient:
    """The real boto3 client, noting the order of uploads."""

    def __init__(self, client):
        self._client, self.uploads = client, []

    def upload_file(self, filename, bucket, key):
        self.uploads.append((bucket, key))
        return self._client.upload_file(filename, bucket, key)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_upload_tree_puts_success_last(tmp_path, s3):
    root = tmp_path / "tree"
    extra = (synth.DropSpec(ACME, DATE - dt.timedelta(days=1), 50, files=3),
             synth.DropSpec(GLOBEX, DATE - dt.timedelta(days=1), 20, corruption="missing_success"))
    synth.generate_scenario(root, landing_bucket="up-landing", first_party_bucket="up-first-party", agreements=AGREEMENTS,
                            drop_date=DATE, n_profiles=100, rows_per_partner=30, seed=1, extra_drops=extra)
    client = RecordingClient(s3_client(s3.endpoint_url, s3.access_key, s3.secret_key))
    uploaded = synth.upload_tree(client, root)

    local = {tuple(str(p.relative_to(root)).split("/", 1)): p for p in root.rglob("*") if p.is_file() and p.parent != root}
    # profiles 2, two drops of 3, one of 3 files + manifest + _SUCCESS, one without _SUCCESS 2
    assert uploaded == len(client.uploads) == len(local) == 2 + 3 + 3 + 5 + 2
    stored = {(b, o.key) for b in ("up-landing", "up-first-party") for o in list_objects(client, b, "")}
    assert stored == set(local) == set(client.uploads)
    for bucket, key in local:
        assert read_bytes(client, bucket, key) == local[bucket, key].read_bytes()
    order = {item: i for i, item in enumerate(client.uploads)}
    for bucket, key in local:
        folder = key.rsplit("/", 1)[0]
        if (bucket, f"{folder}/_SUCCESS") in local and not key.endswith("_SUCCESS"):
            assert order[bucket, key] < order[bucket, f"{folder}/_SUCCESS"], key
    markers = sum(key.endswith("/_SUCCESS") for _, key in local)
    assert markers == 4 and all(key.endswith("/_SUCCESS") for _, key in client.uploads[-markers:])
    assert ("up-landing", "globex_retail/2026-11-20/manifest.json") in stored
    assert ("up-landing", "globex_retail/2026-11-20/_SUCCESS") not in stored


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "partner_pipeline_dev.synth", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(PROJECT / "include"), **(env or {})}, timeout=120)


def test_cli_help():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("--out", "--date", "--profiles", "--rows", "--seed", "--bad-row-share", "--format", "--files", "--agreements-dir", "--upload"):
        assert flag in result.stdout


def test_cli_writes_and_uploads(tmp_path, s3):
    env = {**s3.env(), "PIPELINE_LANDING_BUCKET": "cli-landing", "PIPELINE_FIRST_PARTY_BUCKET": "cli-first-party"}
    result = run_cli("--out", str(tmp_path), "--date", "2026-11-21", "--profiles", "200", "--rows", "80",
                     "--format", "csv", "--upload", env=env)
    assert result.returncode == 0, result.stderr
    assert "Wrote 200 first-party profiles" in result.stdout and "Uploaded 8 objects" in result.stdout
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert set(truth["drops"]) == {"acme_bank/2026-11-21", "globex_retail/2026-11-21"}
    client = s3_client(s3.endpoint_url, s3.access_key, s3.secret_key)
    body = read_bytes(client, "cli-landing", "acme_bank/2026-11-21/records-000.csv")
    assert len(pd.read_csv(io.BytesIO(body))) == truth["drops"]["acme_bank/2026-11-21"]["rows_total"] == 80
