"""Partner ids to destinations: a destination listing `partner_id:globex_retail` among its identifiers
gets Globex's partner_person_id with each member linked to a Globex person whose latest record allows
activation, only where the agreement's partner_person_id_usage_labels allow the destination's
actions (checked at build and again at send time), never for an unlinked or ambiguous person; an
erased person's id leaves the destination's state and the files delivered."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re

import pytest
import yaml

from partner_pipeline import activation, nightly
from partner_pipeline.agreements import load_agreements
from partner_pipeline.governance import load_governance
from partner_pipeline.settings import load_settings
from partner_pipeline.transform import ModelBuildFailed
from partner_pipeline.warehouse import warehouse

pytestmark = pytest.mark.slow

DAY = dt.date(2026, 11, 21)
HTTP = "personalization_api"
GLOBEX_IDS = "partner_id:globex_retail"


def allow_ids(agreements_dir, labels: list[str]) -> None:
    path = agreements_dir / "globex_retail.yaml"
    text = re.sub(r"^partner_person_id_usage_labels: .*\n", "", path.read_text(), flags=re.M)
    path.write_text(text + f"partner_person_id_usage_labels: [{', '.join(labels)}]\n")


def set_identifiers(governance_dir, **identifiers: list[str]) -> None:
    path = governance_dir / "destinations.yaml"
    document = yaml.safe_load(path.read_text())
    for destination, listed in identifiers.items():
        document["destinations"][destination]["identifiers"] = listed
    path.write_text(yaml.safe_dump(document))


def query(sql, params=()):
    with warehouse(load_settings(), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def execute(sql, params=()):
    with warehouse(load_settings()) as con:
        con.execute(sql, list(params))


def rebuild(run_id: str) -> None:
    """The files as they are now mirrored into the warehouse, then the models rebuilt (the night's transform)."""
    settings = load_settings()
    agreements = load_agreements(settings.agreements_dir)
    with warehouse(settings) as con:
        from partner_pipeline.warehouse import publish_agreements, publish_governance
        publish_agreements(con, agreements, settings.outbox_bucket)
        publish_governance(con, load_governance(settings.governance_dir, agreements), settings.activation_bucket)
    nightly.transform(DAY, run_id)


def expected_ids(segment: str) -> dict[str, str | None]:
    """Independently of the models' SQL: each audience member's Globex person, where exactly one Globex person
    is linked to the profile and that person's newest raw record (by drop date, consent time, record id)
    says consent_activation true."""
    members = [p for (p,) in query("SELECT DISTINCT profile_id FROM marts.segment_membership WHERE segment_name = ?", [segment])]
    links = query("SELECT profile_id, partner_person_id FROM marts.partner_person_links WHERE partner_id = 'globex_retail'")
    persons: dict[str, list[str]] = {}
    for profile, person in links:
        persons.setdefault(profile, []).append(person)
    latest = dict(query("""SELECT partner_person_id, arg_max(lower(trim(consent_activation)) = 'true',
                                                     (drop_date, consent_ts, partner_record_id))
                           FROM raw.partner_records WHERE partner_id = 'globex_retail' GROUP BY 1"""))
    return {p: persons[p][0] if len(persons.get(p, [])) == 1 and latest.get(persons[p][0]) else None for p in members}


def delivered_rows(s3_api, destination: str, segment: str, day=DAY) -> tuple[dict, list[dict]]:
    settings = load_settings()
    prefix = f"{destination}/{segment}/{day}/000001/"
    manifest = json.loads(s3_api.get_object(Bucket=settings.activation_bucket, Key=prefix + "manifest.json")["Body"].read())
    rows = []
    for entry in manifest["files"]:
        body = s3_api.get_object(Bucket=settings.activation_bucket, Key=prefix + entry["key"])["Body"].read().decode()
        rows += list(csv.DictReader(io.StringIO(body)))
    return manifest, rows


@pytest.fixture
def with_ids(warehouse_copy, agreements_dir, governance_dir, pipeline_env):
    """Globex allows its ids for email targeting and personalization; crm_email and the personalization
    API take them, the ad list does not ask for them. Models rebuilt."""
    bucket = pipeline_env["PIPELINE_OUTBOX_BUCKET"]  # never another test's outbox (Globex names a fixed one)
    for path in agreements_dir.glob("*.yaml"):
        path.write_text(re.sub(r"^outbox_uri: .*$", f"outbox_uri: s3://{bucket}/{path.stem}/", path.read_text(), flags=re.M))
    allow_ids(agreements_dir, ["email_targeting", "onsite_personalization"])
    set_identifiers(governance_dir, crm_email=["email", GLOBEX_IDS], **{HTTP: ["email", "phone", GLOBEX_IDS]})
    rebuild("ids")
    return warehouse_copy


def test_ids_are_sent_only_where_allowed_and_linked(with_ids, audience_api, s3_api):
    nightly.activate(DAY, "night-1")
    # the file export: one more column, the exact ids of the linked persons, nothing for the others
    manifest, rows = delivered_rows(s3_api, "crm_email", "upsell_prospects")
    assert manifest["columns"] == ["email_sha256", "partner_person_id"] and manifest["partner_person_id_of"] == "globex_retail"
    expected = expected_ids("upsell_prospects")
    audience = dict(query("""SELECT email_sha256, profile_id FROM marts.activation_audiences
                             WHERE destination_id = 'crm_email' AND segment_name = 'upsell_prospects'"""))
    assert len(rows) == len(audience) > 0
    assert {r["email_sha256"]: r["partner_person_id"] or None for r in rows} == {e: expected[p] for e, p in audience.items()}
    assert all(r["partner_person_id"] for r in rows)  # the segment reads Globex: its members are all Globex's, all linked
    # the HTTP API: high_earning_homeowners reads Acme only, so some members are unknown to Globex and go without an id
    held = audience_api.members_with_ids("high_earning_homeowners")
    wanted = expected_ids("high_earning_homeowners")
    sent = dict(query("""SELECT email_sha256, profile_id FROM marts.activation_audiences
                         WHERE destination_id = ? AND segment_name = 'high_earning_homeowners'""", [HTTP]))
    assert {(e, i) for e, _, i in held} == {(e, wanted[p]) for e, p in sent.items()}
    assert any(i for _, _, i in held) and any(i is None for _, _, i in held)
    assert query("SELECT count(*) FROM activation.destination_members WHERE destination_id = ? AND segment_name = 'high_earning_homeowners' "
                 "AND partner_person_id IS NOT NULL",
                 [HTTP])[0][0] == sum(1 for *_, i in held if i)
    # a destination that does not ask for them gets none
    manifest, rows = delivered_rows(s3_api, "ads_customer_list", "attrition_risk")
    assert manifest["columns"] == ["email_sha256", "phone_sha256"] and "partner_person_id" not in rows[0]
    assert query("SELECT count(*) FROM marts.activation_audiences WHERE destination_id = 'ads_customer_list' "
                 "AND partner_person_id IS NOT NULL") == [(0,)]


def test_ambiguous_or_unconsented_person_goes_without_an_id(with_ids, audience_api):
    members = query("""SELECT a.profile_id, a.partner_person_id, r.email_sha256 FROM marts.activation_audiences a
                       JOIN raw.partner_records r ON r.partner_id = 'globex_retail' AND r.partner_person_id = a.partner_person_id
                       WHERE a.destination_id = ? AND a.segment_name = 'high_earning_homeowners' AND a.partner_person_id IS NOT NULL
                       ORDER BY a.profile_id LIMIT 2""", [HTTP])
    (ambiguous, ambiguous_id, email), (withdrawn, withdrawn_id, _) = members
    template = "SELECT * REPLACE (? AS partner_record_id, ? AS partner_person_id{}) FROM raw.partner_records " \
               "WHERE partner_id = 'globex_retail' AND partner_person_id = ? LIMIT 1"
    # another Globex person carrying the same email: the profile is hit by two persons, so neither is linked
    execute("INSERT INTO raw.partner_records " + template.format(""), ["x-ambiguous", "G-OTHER", ambiguous_id])
    # the withdrawn person's newest record refuses activation (enrichment still allowed: the link stays)
    execute("INSERT INTO raw.partner_records " + template.format(
        ", 'false' AS consent_activation, '2026-11-21T00:00:00Z' AS consent_ts"), ["x-withdrawn", withdrawn_id, withdrawn_id])
    rebuild("ids-2")
    assert query("SELECT count(*) FROM marts.partner_person_links WHERE profile_id = ? AND partner_id = 'globex_retail'",
                 [ambiguous]) == [(0,)]
    assert query("SELECT count(*) FROM marts.partner_person_links WHERE profile_id = ? AND partner_id = 'globex_retail'",
                 [withdrawn]) == [(1,)]
    rows = dict(query("""SELECT profile_id, partner_person_id FROM marts.activation_audiences
                         WHERE destination_id = ? AND segment_name = 'high_earning_homeowners' AND profile_id IN (?, ?)""",
                      [HTTP, ambiguous, withdrawn]))
    assert rows == {ambiguous: None, withdrawn: None}  # both still sent (Acme's segment), without an id
    nightly.activate(DAY, "night-1")
    ids = {i for _, _, i in audience_api.members_with_ids("high_earning_homeowners")}
    assert ambiguous_id not in ids and withdrawn_id not in ids and "G-OTHER" not in ids


def test_a_destination_whose_ids_are_forbidden_is_refused_alone_at_send_time(with_ids, agreements_dir, audience_api, s3_api):
    allow_ids(agreements_dir, ["email_targeting"])  # amended after the build: no longer for personalization
    with pytest.raises(activation.ActivationFailed) as failure:
        nightly.activate(DAY, "night-1")
    message = str(failure.value)
    for part in ("-> personalization_api: blocked, nothing sent", "destination personalization_api (action onsite_personalization)",
                 "field identifiers asks for partner_id:globex_retail", "lack label onsite_personalization",
                 "policy personalization_needs_label", "include/governance/destinations.yaml",
                 "partner_person_id_usage_labels"):
        assert part in message
    assert audience_api.members_with_ids("high_earning_homeowners") == set()
    assert audience_api.members_with_ids("upsell_prospects") == set()
    assert not [r for r in audience_api.requests if r.method == "POST"]
    _, rows = delivered_rows(s3_api, "crm_email", "upsell_prospects")  # the others were still sent
    assert rows and all(r["partner_person_id"] for r in rows)
    assert query("SELECT DISTINCT status FROM activation.activation_log WHERE destination_id = ?", [HTTP]) == [("blocked",)]


def test_a_destination_whose_ids_are_forbidden_fails_the_build(with_ids, governance_dir):
    set_identifiers(governance_dir, ads_customer_list=["email", "phone", GLOBEX_IDS])  # advertising: not allowed
    with pytest.raises(ModelBuildFailed) as failure:
        rebuild("ids-forbidden")
    assert ("destination ads_customer_list (action advertising): field identifiers asks for partner_id:globex_retail, "
            "whose partner_person_id_usage_labels [email_targeting, onsite_personalization] lack label advertising; "
            "forbidden by policy advertising_needs_label") in str(failure.value)


def test_an_erased_persons_id_leaves_the_destination_and_the_delivered_files(with_ids, governance_dir, audience_api, s3_api):
    settings = load_settings()
    # the CRM takes Globex's ids alone: only the person id can find the erased person's row in its file
    set_identifiers(governance_dir, crm_email=[GLOBEX_IDS])
    rebuild("ids-only")
    for obj in s3_api.list_objects_v2(Bucket="built-first-party", Prefix="profiles/")["Contents"]:  # the built scenario's snapshot
        s3_api.copy_object(Bucket=settings.first_party_bucket, Key=obj["Key"], CopySource={"Bucket": "built-first-party", "Key": obj["Key"]})
    nightly.activate(DAY, "night-1")
    person, person_id = query("""SELECT profile_id, partner_person_id FROM activation.destination_members
                                 WHERE destination_id = 'crm_email' AND partner_person_id IS NOT NULL ORDER BY 1 LIMIT 1""")[0]
    manifest, rows = delivered_rows(s3_api, "crm_email", "upsell_prospects")
    assert manifest["columns"] == ["partner_person_id"] and person_id in {r["partner_person_id"] for r in rows}
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([["request_id", "received_at", "profile_id", "email", "email_sha256"],
                                                   ["ER-ID", "2026-11-22T08:00:00Z", person, "", ""]])
    day = DAY + dt.timedelta(days=1)
    s3_api.put_object(Bucket=settings.first_party_bucket, Key=f"erasure_requests/{day}/requests.csv", Body=out.getvalue().encode())
    loaded = nightly.load_first_party(day)
    nightly.transform(day, "night-2")
    rights = nightly.data_rights(day, "night-2")
    assert loaded["profiles"] > 0 and rights["activation_files_scrubbed"]
    nightly.activate(day, "night-2")
    assert query("SELECT count(*) FROM activation.destination_members WHERE partner_person_id = ?", [person_id]) == [(0,)]
    after, rows = delivered_rows(s3_api, "crm_email", "upsell_prospects")  # night-1's add file, rewritten
    assert rows and person_id not in {r["partner_person_id"] for r in rows}
    assert after["adds"] == manifest["adds"] - 1 and after["rows_removed_after_delivery_for_erasure"] == 1
    assert {i for _, _, i in audience_api.members_with_ids("upsell_prospects")} - {None}  # others keep theirs
    assert person_id not in {i for _, _, i in audience_api.members_with_ids("upsell_prospects")}


def test_an_access_export_lists_the_partner_ids_sent(with_ids, audience_api, s3_api):
    settings = load_settings()
    for obj in s3_api.list_objects_v2(Bucket="built-first-party", Prefix="profiles/")["Contents"]:
        s3_api.copy_object(Bucket=settings.first_party_bucket, Key=obj["Key"], CopySource={"Bucket": "built-first-party", "Key": obj["Key"]})
    nightly.activate(DAY, "night-1")
    person, person_id = query("""SELECT profile_id, partner_person_id FROM activation.destination_members
                                 WHERE destination_id = 'crm_email' AND partner_person_id IS NOT NULL ORDER BY 1 LIMIT 1""")[0]
    day = DAY + dt.timedelta(days=1)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([["request_id", "received_at", "profile_id", "email"],
                                                   ["AR-ID", "2026-11-22T08:00:00Z", person, ""]])
    s3_api.put_object(Bucket=settings.first_party_bucket, Key=f"access_requests/{day}/requests.csv", Body=out.getvalue().encode())
    nightly.load_first_party(day)
    nightly.transform(day, "night-2")
    nightly.data_rights(day, "night-2")
    export = json.loads(s3_api.get_object(Bucket=settings.first_party_bucket, Key=f"access_exports/{day}/AR-ID.json")["Body"].read())
    sent = {(a["destination_id"], a["segment_name"], a["partner_person_id"]) for a in export["subjects"][0]["activation"]}
    assert ("crm_email", "upsell_prospects", person_id) in sent
    assert {(d, s, i) for d, s, i in sent if d == "ads_customer_list"} <= {("ads_customer_list", "attrition_risk", None)}
