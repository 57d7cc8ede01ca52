"""Prospect profiles and audiences: Globex Retail's consented customers who are none of ours, in their
own mart, selected by the shipped prospect segment (globex_loyal_prospects) and sent to prospect_ads
(which hashes as Globex does) exactly as the generator's ground truth says; a prospect who becomes our
customer, or is erased by an email hash, leaves the audience the next night; a rule reading two
partners is refused at build; an audience below min_audience_size is not sent at all."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import re
import shutil

import numpy as np
import pytest
import yaml

from partner_pipeline import nightly, transform
from partner_pipeline.agreements import load_agreements
from partner_pipeline.governance import load_governance
from partner_pipeline.settings import load_settings
from partner_pipeline.transform import ModelBuildFailed
from partner_pipeline.warehouse import publish_agreements, publish_governance, warehouse
from partner_pipeline_dev import synth
from partner_pipeline_dev.synth.drops import DropSpec
from partner_pipeline_dev.synth.identities import People
from partner_pipeline_dev.synth.truth import expected_prospect_audience, expected_prospects

pytestmark = pytest.mark.slow

DAY = dt.date(2026, 11, 21)
SEGMENT, DESTINATION = "globex_loyal_prospects", "prospect_ads"


def query(sql, params=()):
    with warehouse(load_settings(), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


@pytest.fixture
def scenario(built, warehouse_copy, pipeline_env, agreements_dir, s3_api):
    """The built scenario's warehouse, its first-party snapshot in this test's bucket, this test's outboxes,
    and the prospects the generator's facts say its Globex drop holds."""
    settings = load_settings()
    for obj in s3_api.list_objects_v2(Bucket="built-first-party", Prefix="profiles/")["Contents"]:
        s3_api.copy_object(Bucket=settings.first_party_bucket, Key=obj["Key"], CopySource={"Bucket": "built-first-party", "Key": obj["Key"]})
    for path in agreements_dir.glob("*.yaml"):  # never another test's outbox (Globex names a fixed one)
        path.write_text(re.sub(r"^outbox_uri: .*$", f"outbox_uri: s3://{settings.outbox_bucket}/{path.stem}/", path.read_text(), flags=re.M))
    truth = built["truth"]
    agreement = load_agreements(agreements_dir)["globex_retail"]
    spec = DropSpec(agreement, DAY, 4000, bad_row_share=0.01)  # as the built fixture generated it
    prospects = expected_prospects(spec, truth["seed"], 5000, truth["seed"])
    rule = synth.load_segments(kind="prospect")[SEGMENT]["rule"]
    return {"settings": settings, "prospects": prospects, "audience": expected_prospect_audience(prospects, rule),
            "seed": truth["seed"]}


def delivered(s3_api, day=DAY, sync=1):
    """(manifest, {operation: rows}) of prospect_ads' export of `day`, sync number `sync`."""
    bucket, prefix = load_settings().activation_bucket, f"{DESTINATION}/{SEGMENT}/{day}/{sync:06d}/"
    manifest = json.loads(s3_api.get_object(Bucket=bucket, Key=prefix + "manifest.json")["Body"].read())
    rows: dict[str, list] = {}
    for entry in manifest["files"]:
        body = s3_api.get_object(Bucket=bucket, Key=prefix + entry["key"])["Body"].read().decode()
        rows.setdefault(entry["operation"], []).extend((r["email_sha256"] or None, r["phone_sha256"] or None)
                                                       for r in csv.DictReader(io.StringIO(body)))
    return manifest, rows


def night(day, run_id):
    nightly.load_first_party(day)
    nightly.transform(day, run_id)
    nightly.data_rights(day, run_id)
    return nightly.activate(day, run_id)


def test_prospect_audience_equals_the_ground_truth_and_is_sent(scenario, audience_api, s3_api):
    prospects, audience = scenario["prospects"], scenario["audience"]
    assert prospects.num_rows > len(audience) >= 20  # the rule selects some of them, enough to be sent
    built = query("SELECT partner_id, partner_person_id, hash_profile FROM marts.prospect_profiles")
    assert {(p, i, h) for p, i, h in built} == {("globex_retail", i, "uid2") for i in prospects["partner_person_id"].to_pylist()}
    # the prospect mart never carries a profile, a first-party column or an unlabelled attribute
    columns = {c for (c,) in query("SELECT column_name FROM information_schema.columns WHERE table_name = 'prospect_profiles'")}
    assert "globex_retail__loyalty_tier" in columns and not columns & {"profile_id", "tier", "globex_retail__churn_risk_score"}
    members = query("SELECT partner_id, partner_person_id FROM marts.prospect_segment_membership WHERE segment_name = ?", [SEGMENT])
    assert {i for _, i in members} == {i for i, _, _ in audience} and {p for p, _ in members} == {"globex_retail"}
    results = nightly.activate(DAY, "night-1")
    assert {"destination_id": DESTINATION, "segment": SEGMENT, "status": "synced"}.items() <= next(
        r for r in results if r["segment"] == SEGMENT).items()
    manifest, rows = delivered(s3_api)
    assert manifest["hash_profile"] == "uid2" and manifest["columns"] == ["email_sha256", "phone_sha256"]
    assert sorted(rows["add"], key=str) == sorted({(e, p) for _, e, p in audience}, key=str)
    # never merged with our customers: no prospect row names a profile, and customers' segments are unchanged
    assert query("SELECT count(*) FROM activation.destination_members WHERE segment_name = ? AND profile_id IS NOT NULL",
                 [SEGMENT]) == [(0,)]


def test_a_prospect_who_becomes_a_customer_is_removed_the_next_night(scenario, audience_api, s3_api):
    settings = scenario["settings"]
    nightly.activate(DAY, "night-1")
    person_id, email_hash, phone_hash = sorted(scenario["audience"], key=str)[0]
    prospects = scenario["prospects"]
    index = prospects["person"][prospects["partner_person_id"].to_pylist().index(person_id)].as_py()
    email = People(scenario["seed"], np.array([index])).base_emails()[0].as_py()
    # the next snapshot: the built one plus a new customer with the prospect's email
    day = DAY + dt.timedelta(days=1)
    old = f"profiles/{DAY}/profiles-000.csv.gz"
    text = gzip.decompress(s3_api.get_object(Bucket=settings.first_party_bucket, Key=old)["Body"].read()).decode()
    customer = {"profile_id": "p0000900001", "email": email, "country": "US", "consent_marketing": "true"}
    header = text.split("\n", 1)[0].split(",")  # the snapshot's own columns, whatever the generator writes
    text = text.rstrip("\n") + "\n" + ",".join(customer.get(column, "") for column in header) + "\n"
    s3_api.put_object(Bucket=settings.first_party_bucket, Key=f"profiles/{day}/profiles-000.csv.gz", Body=gzip.compress(text.encode()))
    s3_api.put_object(Bucket=settings.first_party_bucket, Key=f"profiles/{day}/_SUCCESS", Body=b"")
    night(day, "night-2")
    assert query("SELECT profile_id FROM marts.partner_person_links WHERE partner_person_id = ?", [person_id]) == [("p0000900001",)]
    assert query("SELECT count(*) FROM marts.prospect_profiles WHERE partner_person_id = ?", [person_id]) == [(0,)]
    manifest, rows = delivered(s3_api, day, sync=2)
    assert manifest["removes"] == 1 and rows == {"remove": [(email_hash, phone_hash)]}
    assert query("SELECT count(*) FROM activation.destination_members WHERE segment_name = ? AND email_sha256 IS NOT DISTINCT FROM ? "
                 "AND phone_sha256 IS NOT DISTINCT FROM ?", [SEGMENT, email_hash, phone_hash]) == [(0,)]


def test_an_erased_prospect_is_removed_and_never_sent_again(scenario, audience_api, s3_api):
    settings = scenario["settings"]
    nightly.activate(DAY, "night-1")
    person_id, email_hash, phone_hash = next(m for m in sorted(scenario["audience"], key=str) if m[1])
    day = DAY + dt.timedelta(days=1)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([["request_id", "received_at", "profile_id", "email", "email_sha256"],
                                                   ["ER-P", "2026-11-22T08:00:00Z", "", "", email_hash]])
    s3_api.put_object(Bucket=settings.first_party_bucket, Key=f"erasure_requests/{day}/requests.csv", Body=out.getvalue().encode())
    night(day, "night-2")
    assert query("SELECT count(*) FROM marts.prospect_profiles WHERE partner_person_id = ?", [person_id]) == [(0,)]
    assert query("SELECT count(*) FROM raw.partner_records WHERE partner_person_id = ?", [person_id]) == [(0,)]
    assert query("SELECT count(*) FROM activation.destination_members WHERE email_sha256 = ?", [email_hash]) == [(0,)]
    _, rows = delivered(s3_api, day, sync=2)
    assert rows == {"remove": [(email_hash, phone_hash)]}
    _, first = delivered(s3_api)  # night-1's add file, rewritten without them
    assert (email_hash, phone_hash) not in first["add"] and len(first["add"]) == len(scenario["audience"]) - 1


def test_below_min_audience_size_nothing_is_sent(scenario, governance_dir, audience_api, s3_api):
    path = governance_dir / "destinations.yaml"
    document = yaml.safe_load(path.read_text())
    document["destinations"][DESTINATION]["min_audience_size"] = len(scenario["audience"]) + 1
    path.write_text(yaml.safe_dump(document))
    results = nightly.activate(DAY, "night-1")
    assert next(r for r in results if r["segment"] == SEGMENT)["status"] == "withheld"
    assert s3_api.list_objects_v2(Bucket=load_settings().activation_bucket, Prefix=f"{DESTINATION}/").get("KeyCount", 0) == 0
    detail = query("SELECT status, detail FROM activation.activation_log WHERE destination_id = ?", [DESTINATION])
    assert detail == [("withheld", f"prospect audience {SEGMENT} has {len(scenario['audience'])} members for {DESTINATION}, fewer "
                                   f"than its min_audience_size {len(scenario['audience']) + 1} "
                                   f"(include/governance/destinations.yaml): nothing of it is sent")]
    assert query("SELECT count(*) FROM activation.destination_members WHERE destination_id = ?", [DESTINATION]) == [(0,)]
    # the run's summary (make demo / make run) says withheld, not unchanged
    settings = load_settings()
    transform.publish_for_analysts(settings, DAY, "night-1")
    with transform.published_marts(settings) as con:
        [pair] = [r for r in transform.published_summary(con, DAY)["activation"] if r["segment_name"] == SEGMENT]
    assert (pair["status"], pair["adds"], pair["members_held"]) == ("withheld", 0, 0)


def test_a_prospect_rule_reading_two_partners_is_refused_at_build(scenario, agreements_dir, tmp_path, monkeypatch):
    path = agreements_dir / "acme_bank.yaml"
    band = "    allowed_values: [under_100k, 100k_500k, 500k_1m, over_1m]\n    usage_labels: [segmentation, onsite_personalization"
    path.write_text(path.read_text().replace(band + "]", band + ", prospecting]"))
    project = tmp_path / "dbt_project"
    shutil.copytree(transform.DBT_PROJECT, project, ignore=shutil.ignore_patterns("target", "logs", ".user.yml"))
    segments = project / "models" / "marts" / "_segments.yml"
    document = yaml.safe_load(segments.read_text())
    model = next(m for m in document["models"] if m["name"] == "segment_membership")
    model["config"]["meta"]["segments"] += [
        {"name": "two_partners", "kind": "prospect", "rule": "globex_retail__loyalty_tier = 'gold' and acme_bank__net_worth_band = 'over_1m'",
         "destinations": [DESTINATION]},
        {"name": "with_our_columns", "kind": "prospect", "rule": "globex_retail__loyalty_tier = 'gold' and tier = 'standard'",
         "destinations": [DESTINATION]}]
    segments.write_text(yaml.safe_dump(document, sort_keys=False))
    monkeypatch.setattr(transform, "DBT_PROJECT", project)
    settings = load_settings()
    agreements = load_agreements(agreements_dir)
    with warehouse(settings) as con:
        publish_agreements(con, agreements, settings.outbox_bucket)
        publish_governance(con, load_governance(settings.governance_dir, agreements), settings.activation_bucket)
    with pytest.raises(ModelBuildFailed) as failure:
        nightly.transform(DAY, "two")
    message = str(failure.value)
    assert ("segment two_partners (kind prospect) field rule reads the attributes of acme_bank and globex_retail; a prospect "
            "segment selects one partner's prospects. Fix: read one partner's attributes, or declare a prospect segment per partner") in message
    assert "segment with_our_columns (kind prospect) field rule reads tier, which is no prospecting attribute of a partner" in message
    assert "models/marts/_segments.yml" in message and SEGMENT not in message


def test_withdrawn_consent_and_retention_remove_prospects(scenario):
    person_id = sorted(scenario["audience"], key=str)[0][0]
    # the person's newest record withdraws consent_activation: no longer a prospect
    with warehouse(load_settings()) as con:
        con.execute("""INSERT INTO raw.partner_records SELECT * REPLACE ('x-withdrawn' AS partner_record_id, 'false' AS consent_activation,
                                                                      '2026-11-21T00:00:00Z' AS consent_ts)
                       FROM raw.partner_records WHERE partner_id = 'globex_retail' AND partner_person_id = ?""", [person_id])
    nightly.transform(DAY, "withdrawn")
    prospects = {i for (i,) in query("SELECT partner_person_id FROM marts.prospect_profiles")}
    assert person_id not in prospects and len(prospects) == scenario["prospects"].num_rows - 1
    # Globex keeps records 180 days: built for a date past that, no prospect is left
    nightly.transform(DAY + dt.timedelta(days=181), "expired")
    assert query("SELECT count(*) FROM marts.prospect_profiles") == [(0,)]
    assert query("SELECT count(*) FROM marts.prospect_segment_membership") == [(0,)]


def test_a_destination_under_another_hash_profile_gets_prospects_by_partner_id_alone(scenario, agreements_dir, governance_dir,
                                                                                     audience_api, s3_api):
    """prospect_ads hashing canonically (Globex hashes under uid2, so its hashes would mean nothing there)
    and taking Globex's ids, which Globex allows for advertising: every prospect of the audience is sent
    by its partner_person_id and no hash."""
    settings = scenario["settings"]
    path = agreements_dir / "globex_retail.yaml"
    path.write_text(path.read_text() + "partner_person_id_usage_labels: [advertising]\n")
    destinations = governance_dir / "destinations.yaml"
    document = yaml.safe_load(destinations.read_text())
    document["destinations"][DESTINATION].update(hash_profile="canonical", identifiers=["email", "phone", "partner_id:globex_retail"])
    destinations.write_text(yaml.safe_dump(document))
    agreements = load_agreements(agreements_dir)
    with warehouse(settings) as con:
        publish_agreements(con, agreements, settings.outbox_bucket)
        publish_governance(con, load_governance(settings.governance_dir, agreements), settings.activation_bucket)
    nightly.transform(DAY, "by-id")
    nightly.activate(DAY, "by-id")
    prefix = f"{DESTINATION}/{SEGMENT}/{DAY}/000001/"
    manifest = json.loads(s3_api.get_object(Bucket=settings.activation_bucket, Key=prefix + "manifest.json")["Body"].read())
    rows = [r for entry in manifest["files"] for r in csv.DictReader(io.StringIO(
        s3_api.get_object(Bucket=settings.activation_bucket, Key=prefix + entry["key"])["Body"].read().decode()))]
    assert manifest["adds"] == len(rows) == len(scenario["audience"]) > 20
    assert sorted(r["partner_person_id"] for r in rows) == sorted(person for person, _, _ in scenario["audience"])
    assert all(not r.get("email_sha256") and not r.get("phone_sha256") for r in rows)
