"""Activation against real destinations: the loopback audience API (which validates every payload
and misbehaves on request) and file exports to the real S3 server; usage policies at build time
and at send time; consent; diffs across consecutive days; resume without duplicates."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import duckdb
import pytest
import yaml

from partner_pipeline import activation, nightly
from partner_pipeline.agreements import load_agreements
from partner_pipeline.governance import load_governance
from partner_pipeline.settings import load_settings
from partner_pipeline.transform import ModelBuildFailed
from partner_pipeline.warehouse import warehouse
from partner_pipeline_dev import synth
from partner_pipeline_dev.local_audience_api import Fault

pytestmark = pytest.mark.slow

DAY = dt.date(2026, 11, 21)
HTTP = "personalization_api"


def destinations_file(governance_dir, **changes):
    """Edit include/governance/destinations.yaml's copy: changes = {destination: {field: value}}."""
    path = governance_dir / "destinations.yaml"
    document = yaml.safe_load(path.read_text())
    for destination, fields in changes.items():
        document["destinations"][destination].update(fields)
    path.write_text(yaml.safe_dump(document))


def run_activation(run_id="night-1", day=DAY, full_refresh=False, credentials=None, delays=None):
    """activation.activate as the DAG's task runs it, recording backoff delays instead of sleeping."""
    settings = load_settings()
    agreements = load_agreements(settings.agreements_dir)
    governance = load_governance(settings.governance_dir, agreements)
    run = activation.Run(run_id, day, full_refresh, sleep=(delays.append if delays is not None else lambda s: None))
    from partner_pipeline.storage import client_from_settings
    from partner_pipeline.warehouse import publish_agreements, publish_governance

    with warehouse(settings) as con:
        publish_agreements(con, agreements, settings.outbox_bucket)
        publish_governance(con, governance, settings.activation_bucket)
        return activation.activate(con, governance, run, client_from_settings(settings), settings.activation_bucket,
                                   **({"credentials": credentials} if credentials else {}))


def query(sql, params=()):
    with warehouse(load_settings(), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def audience(destination, segment):
    """What the destination should hold, from the mart, as the API stores members."""
    return set(query("SELECT email_sha256, phone_sha256 FROM marts.activation_audiences WHERE destination_id = ? AND segment_name = ?",
                     (destination, segment)))


def export_rows(s3_api, bucket, prefix):
    objects = [o["Key"] for o in s3_api.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    manifest = json.loads(s3_api.get_object(Bucket=bucket, Key=prefix + "manifest.json")["Body"].read())
    rows = {}
    for entry in manifest["files"]:
        body = s3_api.get_object(Bucket=bucket, Key=prefix + entry["key"])["Body"].read().decode()
        table = list(csv.DictReader(io.StringIO(body)))
        assert len(table) == entry["rows"]
        rows.setdefault(entry["operation"], []).extend(table)
    return objects, manifest, rows


def test_every_declared_pair_syncs_with_the_token_from_the_airflow_connection(warehouse_copy, audience_api):
    results = nightly.activate(DAY, "night-1")  # as the DAG's task: AIRFLOW_CONN_PERSONALIZATION_API
    assert {(r["destination_id"], r["segment"]): r["status"] for r in results} == {
        ("ads_customer_list", "attrition_risk"): "synced", ("crm_email", "upsell_prospects"): "synced",
        (HTTP, "high_earning_homeowners"): "synced", (HTTP, "upsell_prospects"): "synced",
        ("prospect_ads", "globex_loyal_prospects"): "synced"}
    assert all(r.status in (200, None) and r.applied for r in audience_api.requests)


@pytest.fixture
def sendable(built):
    return built["truth"]["sendable"]


def audience_members(destination, segment):
    return [p for (p,) in query("SELECT profile_id FROM marts.activation_audiences WHERE destination_id = ? AND segment_name = ?",
                                [destination, segment])]


def base_email_hashes(built, profile_ids, hash_profile):
    """sha256 of the persons' base emails: (those hash_profile folds their address back to, those it does not)."""
    people = synth.People(built["truth"]["seed"], [int(p.removeprefix("p")) - 1 for p in profile_ids])
    folds = synth.email_normalizes_to_base(people.variant, hash_profile)
    hashes = [synth.sha256_hex(e) for e in people.base_emails().to_pylist()]
    return {h for h, f in zip(hashes, folds) if f}, {h for h, f in zip(hashes, folds) if not f}


def test_sizes_match_ground_truth_and_no_unconsented_member_is_sent(built, warehouse_copy, audience_api, s3_api, sendable):
    nightly.activate(DAY, "night-1")
    settings = load_settings()
    for segment in ("high_earning_homeowners", "upsell_prospects"):
        members = audience_api.members(segment)
        assert len(members) == sendable[segment] > 0
        assert members == audience(HTTP, segment)
    # file exports: CSV customer lists under the destination's hash profile, manifest and _SUCCESS
    for destination, segment, columns in (("crm_email", "upsell_prospects", ["email_sha256"]),
                                          ("ads_customer_list", "attrition_risk", ["email_sha256", "phone_sha256"])):
        prefix = f"{destination}/{segment}/{DAY}/000001/"
        objects, manifest, rows = export_rows(s3_api, settings.activation_bucket, prefix)
        assert prefix + "_SUCCESS" in objects
        assert manifest["mode"] == "delta" and manifest["columns"] == columns and manifest["removes"] == 0
        assert len(rows["add"]) == manifest["adds"] == sendable[segment] > 0
        assert list(rows["add"][0]) == columns
    # hashes are those of the destination's profile, checked against the generator's own identities:
    # google for the ad list keeps a +tag that canonical would fold away, so those persons' base
    # hashes must not arrive, and everyone else's must
    _, _, rows = export_rows(s3_api, settings.activation_bucket, f"ads_customer_list/attrition_risk/{DAY}/000001/")
    folded, kept = base_email_hashes(built, audience_members("ads_customer_list", "attrition_risk"), "google")
    sent = {r["email_sha256"] for r in rows["add"]}
    assert kept and folded <= sent and not kept & sent
    # never sent: profiles without first-party marketing consent, or whose partner record refuses activation
    refused_ids = [p for (p,) in query("""
        SELECT profile_id FROM staging.stg_first_party__profiles WHERE NOT has_consent_marketing
        UNION
        SELECT profile_id FROM marts.profile_partner_attributes WHERE partner_id = 'globex_retail' AND NOT has_consent_activation""")]
    refused, _ = base_email_hashes(built, refused_ids, "uid2")
    members = query("SELECT segment_name, profile_id FROM marts.segment_membership WHERE segment_name = 'upsell_prospects'")
    assert len(members) > len(audience_api.members("upsell_prospects"))  # consent really removed someone
    assert not {e for e, _ in audience_api.members("upsell_prospects")} & refused


def test_second_sync_with_nothing_changed_sends_nothing(warehouse_copy, audience_api):
    nightly.activate(DAY, "night-1")
    requests = len(audience_api.requests)
    results = nightly.activate(DAY, "night-2")
    assert len(audience_api.requests) == requests
    assert all(r["adds"] == r["removes"] == 0 for r in results)
    log = query("SELECT run_id, count(*) FILTER (WHERE status = 'sent') FROM activation.activation_log GROUP BY 1 ORDER BY 1")
    assert log[0][1] > 0 and log == [log[0]]  # night-2 logged no batch


def test_retries_429_5xx_timeouts_and_dropped_connections_with_backoff(warehouse_copy, governance_dir, audience_api):
    destinations_file(governance_dir, **{HTTP: {"batch_size": 10, "timeout_seconds": 0.5, "backoff_seconds": 0.2}})
    audience_api.inject(Fault.status(429, retry_after="3"), Fault.status(500), Fault.timeout(2), Fault.drop(),
                        Fault.status(503))
    delays = []
    results = run_activation(delays=delays, credentials=lambda _: (audience_api.url, audience_api.token))
    assert all(r["status"] == "synced" for r in results)
    assert audience_api.members("upsell_prospects") == audience(HTTP, "upsell_prospects")
    assert audience_api.members("high_earning_homeowners") == audience(HTTP, "high_earning_homeowners")
    retries = query("""SELECT attempt, response_code, idempotency_key FROM activation.activation_log
                       WHERE status = 'retrying' ORDER BY rowid""")
    assert [(a, c) for a, c, _ in retries] == [(1, 429), (2, 500), (3, None), (4, None), (5, 503)]
    assert len({k for _, _, k in retries}) == 1  # every attempt of a batch carries the same Idempotency-Key
    assert delays[0] >= 3  # Retry-After honoured
    assert all(0 <= d <= 0.2 * 2 ** i for i, d in enumerate(delays[1:], start=1))  # full jitter under the exponential cap
    assert audience_api.applied_count == query("SELECT count(*) FROM activation.activation_log WHERE status = 'sent' AND destination_id = ?", (HTTP,))[0][0]


def test_halfway_failure_resumes_without_sending_anything_twice(warehouse_copy, governance_dir, audience_api):
    destinations_file(governance_dir, **{HTTP: {"batch_size": 5, "max_attempts": 2, "backoff_seconds": 0}})
    credentials = lambda _: (audience_api.url, audience_api.token)  # noqa: E731
    # batch 1 is applied but its answer is lost, and its retry fails: the run stops there for this pair
    audience_api.inject(Fault.drop_after_apply(), Fault.status(500))
    with pytest.raises(activation.ActivationFailed, match=r"high_earning_homeowners -> personalization_api: .*failed 2 times"):
        run_activation("night-1", credentials=credentials)
    held = query("SELECT count(*) FROM activation.destination_members WHERE destination_id = ? AND segment_name = ?",
                 (HTTP, "high_earning_homeowners"))[0][0]
    assert (held, len(audience_api.members("high_earning_homeowners"))) == (0, 5)  # we do not know it arrived
    assert query("SELECT status FROM activation.activation_log WHERE destination_id = 'crm_email'") == [("sent",)]
    assert audience_api.members("upsell_prospects") == audience(HTTP, "upsell_prospects")  # other pairs went on
    run_activation("night-1", credentials=credentials)  # the task's retry resumes
    assert audience_api.replayed == 1  # batch 1 re-sent under the same key: the destination ignored it
    for segment in ("high_earning_homeowners", "upsell_prospects"):
        assert audience_api.members(segment) == audience(HTTP, segment)
    posts = [r for r in audience_api.requests if r.method == "POST" and r.applied]
    assert sum(r.members for r in posts) == sum(len(audience(HTTP, s)) for s in ("high_earning_homeowners", "upsell_prospects"))
    keys = [r.idempotency_key for r in posts]
    assert len(keys) == len(set(keys))


def test_resume_after_applied_batches_continues_their_count_and_keys(warehouse_copy, governance_dir, audience_api):
    destinations_file(governance_dir, **{HTTP: {"batch_size": 5, "max_attempts": 2, "backoff_seconds": 0}})
    credentials = lambda _: (audience_api.url, audience_api.token)  # noqa: E731
    # the first two batches are applied and recorded; the third arrives but its answer is lost, and its retry fails
    audience_api.inject(Fault.answer(), Fault.answer(), Fault.drop_after_apply(), Fault.status(500))
    with pytest.raises(activation.ActivationFailed, match=r"(\w+) -> personalization_api: .*failed 2 times") as failed:
        run_activation("night-1", credentials=credentials)
    segment = failed.value.args[0].split(" -> personalization_api")[0].split()[-1]
    pair = (HTTP, segment)
    sent = "SELECT count(*) FROM activation.activation_log WHERE destination_id = ? AND segment_name = ? AND status = 'sent'"
    held = "SELECT count(*) FROM activation.destination_members WHERE destination_id = ? AND segment_name = ?"
    assert (query(sent, pair)[0][0], query(held, pair)[0][0]) == (2, 10)
    # the pair's state as analysts read it: the batches the log records as sent
    assert query("SELECT batches_applied FROM activation.syncs WHERE destination_id = ? AND segment_name = ?", pair) == [(2,)]
    run_activation("night-1", credentials=credentials)  # the task's retry resumes at batch 3, under its first key
    assert audience_api.replayed == 1
    assert audience_api.members(segment) == audience(HTTP, segment)
    posts = [r for r in audience_api.requests if r.method == "POST" and r.applied and f"/audiences/{segment}/" in r.path]
    assert len({r.idempotency_key for r in posts}) == len(posts)  # each batch applied once (batch 3's resend was a replay)
    assert query("SELECT batches_applied FROM activation.syncs WHERE destination_id = ? AND segment_name = ?", pair) \
        == [(len(posts),)] == [(query(sent, pair)[0][0],)]


def test_batches_a_lost_transaction_applied_are_resent_under_their_keys(warehouse_copy, governance_dir, audience_api,
                                                                        monkeypatch):
    # applied batches are written and committed together: a process that dies before their commit (here an
    # error while writing them, which leaves the transaction to activate's rollback, as a kill would) sends
    # them again under the same keys, and the destination ignores them
    destinations_file(governance_dir, **{HTTP: {"batch_size": 5}})
    monkeypatch.setattr(activation, "BATCH_COMMIT_SECONDS", 3600)
    apply, calls = activation._apply, []

    def dies_writing_http_batches(*args, **kwargs):
        if args[1] == HTTP and (not calls or args[2] == calls[0][2]):  # the first pair's only
            calls.append(args)
            raise RuntimeError("killed")
        return apply(*args, **kwargs)

    monkeypatch.setattr(activation, "_apply", dies_writing_http_batches)
    with pytest.raises(activation.ActivationFailed, match="killed"):
        run_activation("night-1")
    segment = calls[0][2]
    pair = (HTTP, segment)
    assert query("SELECT count(*) FROM activation.destination_members WHERE destination_id = ? AND segment_name = ?",
                 pair) == [(0,)]
    assert query("SELECT count(*) FROM activation.activation_log WHERE destination_id = ? AND segment_name = ? "
                 "AND status = 'sent'", pair) == [(0,)]
    first_keys = [r.idempotency_key for r in audience_api.requests if f"/audiences/{segment}/" in r.path]
    assert len(first_keys) == -(-len(audience(HTTP, segment)) // 5) >= 3  # every batch was sent, in one commit's time
    assert calls[0][6] == (1, len(audience(HTTP, segment)))  # and they were to be written with one statement
    monkeypatch.setattr(activation, "_apply", apply)
    run_activation("night-1")
    resent = [r.idempotency_key for r in audience_api.requests if f"/audiences/{segment}/" in r.path][len(first_keys):]
    assert resent == first_keys and audience_api.replayed == len(first_keys)  # the destination ignored them all
    assert audience_api.members(segment) == audience(HTTP, segment)
    assert query("SELECT batches_applied FROM activation.syncs WHERE destination_id = ? AND segment_name = ?", pair) \
        == query("SELECT count(*) FROM activation.activation_log WHERE destination_id = ? AND segment_name = ? "
                 "AND status = 'sent'", pair) == [(len(first_keys),)]


def test_publishing_merges_the_small_files_each_batch_wrote(warehouse_copy, governance_dir, audience_api, monkeypatch):
    from partner_pipeline import transform

    destinations_file(governance_dir, **{HTTP: {"batch_size": 5}})
    monkeypatch.setattr(activation, "BATCH_COMMIT_SECONDS", 0)  # each batch its own commit, as on a slow destination
    run_activation("night-1")
    files = "SELECT count(*) FROM ducklake_list_files('lake', ?, schema => 'activation')"
    log = "SELECT rowid, * FROM activation.activation_log ORDER BY rowid"
    batches, before = query(files, ("activation_log",))[0][0], query(log)
    assert batches > 20  # a file per batch (and per log row)
    published = transform.publish_for_analysts(warehouse_copy, DAY, "night-1")
    assert query(files, ("activation_log",)) == [(1,)] and query(files, ("destination_members",)) == [(1,)]
    assert query(log) == before  # the same rows in the same order (the log's order is its rowid)
    with transform.published_marts(warehouse_copy) as con:
        assert con.execute("SELECT count(*) FROM activation_log").fetchone()[0] == len(before)
    assert published.startswith("lake snapshot")


def test_other_4xx_fails_at_once_with_the_response_body(warehouse_copy, audience_api):
    audience_api.inject(Fault.status(400, body={"error": "audience high_earning_homeowners is archived"}))
    with pytest.raises(activation.ActivationFailed, match=r"answered 400 .*audience high_earning_homeowners is archived"):
        nightly.activate(DAY, "night-1")
    rejected = query("SELECT attempt, response_code FROM activation.activation_log WHERE status = 'rejected'")
    assert rejected == [(1, 400)]


def test_full_refresh_clears_and_resends_once_per_run(warehouse_copy, audience_api, s3_api):
    nightly.activate(DAY, "night-1")
    audience_api.members("upsell_prospects")
    nightly.activate(DAY, "night-2", full_refresh=True)
    deletes = [r for r in audience_api.requests if r.method == "DELETE"]
    assert len(deletes) == 2 and audience_api.members("upsell_prospects") == audience(HTTP, "upsell_prospects")
    nightly.activate(DAY, "night-2", full_refresh=True)  # a retry of the same run does not clear again
    assert len([r for r in audience_api.requests if r.method == "DELETE"]) == 2
    _, manifest, rows = export_rows(s3_api, load_settings().activation_bucket, f"crm_email/upsell_prospects/{DAY}/000002/")
    assert manifest["mode"] == "replace" and len(rows["add"]) == len(audience("crm_email", "upsell_prospects"))


def test_send_time_recheck_blocks_a_segment_whose_attribute_lost_a_label(warehouse_copy, agreements_dir, audience_api):
    # after the build, the agreement is amended: Globex no longer allows loyalty_tier for personalization
    path = agreements_dir / "globex_retail.yaml"
    path.write_text(path.read_text().replace(
        "usage_labels: [segmentation, email_targeting, advertising, onsite_personalization, prospecting]",
        "usage_labels: [segmentation, email_targeting, advertising, prospecting]"))
    with pytest.raises(activation.ActivationFailed) as failure:
        nightly.activate(DAY, "night-1")
    message = str(failure.value)
    for part in ("upsell_prospects -> personalization_api", "globex_retail__loyalty_tier", "onsite_personalization",
                 "personalization_needs_label", "blocked, nothing sent"):
        assert part in message
    assert audience_api.members("upsell_prospects") == set()  # nothing sent there
    assert audience_api.members("high_earning_homeowners") == audience(HTTP, "high_earning_homeowners")  # others went
    assert query("SELECT status FROM activation.activation_log WHERE segment_name = 'upsell_prospects' AND destination_id = ?",
                 (HTTP,)) == [("blocked",)]


def test_policy_violation_fails_the_build_naming_segment_attribute_label_destination_and_policy(pipeline_env, s3_api, tmp_path, agreements_dir):
    settings = load_settings()
    path = agreements_dir / "globex_retail.yaml"
    path.write_text(path.read_text().replace(
        "usage_labels: [segmentation, email_targeting, advertising, onsite_personalization, prospecting]",
        "usage_labels: [segmentation, advertising, onsite_personalization, prospecting]"))
    synth.generate_scenario(tmp_path / "synth", landing_bucket=settings.landing_bucket, first_party_bucket=settings.first_party_bucket,
                            agreements=load_agreements(agreements_dir), drop_date=DAY, n_profiles=300, rows_per_partner=200, seed=2)
    synth.upload_tree(s3_api, tmp_path / "synth")
    nightly.publish([nightly.ingest(d, "r") for d in nightly.discover(DAY, "r")], DAY, "r")
    nightly.load_first_party(DAY)
    with pytest.raises(ModelBuildFailed) as failure:
        nightly.transform(DAY, "r")
    assert ("segment upsell_prospects -> destination crm_email (action email_targeting): reads globex_retail__loyalty_tier, "
            "whose usage labels [segmentation, advertising, onsite_personalization, prospecting] lack label email_targeting; "
            "forbidden by policy email_targeting_needs_label") in str(failure.value)
    with warehouse(settings, read_only=True) as con:  # a failed build replaces no marts: activation has nothing to send
        assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_catalog = 'marts'").fetchone()[0] == 0


def test_three_days_of_changing_segments_send_exactly_the_differences(pipeline_env, governance_dir, audience_api, s3_api, tmp_path):
    settings = load_settings()
    agreements = load_agreements(settings.agreements_dir)
    root = tmp_path / "synth"
    synth.generate_scenario(root, landing_bucket=settings.landing_bucket, first_party_bucket=settings.first_party_bucket,
                            agreements=agreements, drop_date=DAY, n_profiles=800, rows_per_partner=500, seed=4)
    held_before: dict = {}
    totals = {"adds": 0, "removes": 0}
    for n, day in enumerate((DAY, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=2))):
        if n:  # each later day both partners deliver again: new people, changed attributes and consents
            for partner_id in ("acme_bank", "globex_retail"):
                synth.write_drop(root, settings.landing_bucket, synth.DropSpec(agreements[partner_id], day, rows=300),
                                 profiles_seed=4, n_profiles=800, seed=10 + n)
        synth.upload_tree(s3_api, root)
        run_id = f"night-{day}"
        nightly.publish([nightly.ingest(d, run_id) for d in nightly.discover(day, run_id)], day, run_id)
        nightly.load_first_party(day)
        nightly.transform(day, run_id)
        nightly.activate(day, run_id)
        for destination, segment in ((HTTP, "upsell_prospects"), (HTTP, "high_earning_homeowners"), ("crm_email", "upsell_prospects")):
            wanted = audience(destination, segment)
            before = held_before.get((destination, segment), set())
            logged = query("""SELECT coalesce(sum(adds), 0), coalesce(sum(removes), 0) FROM activation.activation_log
                              WHERE run_id = ? AND destination_id = ? AND segment_name = ? AND status = 'sent'""",
                           (run_id, destination, segment))[0]
            assert logged == (len(wanted - before), len(before - wanted)), (day, destination, segment)
            if destination == HTTP:
                assert audience_api.members(segment) == wanted
            held_before[(destination, segment)] = wanted
            totals["adds"] += logged[0]
            totals["removes"] += logged[1] if n else 0
    assert totals["adds"] > 0 and totals["removes"] > 0  # the days really changed the segments both ways
    # the file destination got one delta export per day that changed, each complete with _SUCCESS
    exports = {o["Key"].rsplit("/", 1)[0] for o in s3_api.list_objects_v2(
        Bucket=settings.activation_bucket, Prefix="crm_email/upsell_prospects/")["Contents"] if o["Key"].endswith("_SUCCESS")}
    assert len(exports) == query("SELECT count(*) FROM activation.activation_log WHERE destination_id = 'crm_email' AND status = 'sent'")[0][0]


def test_parquet_export_in_batches_of_batch_size_rows(warehouse_copy, governance_dir, audience_api, s3_api, tmp_path):
    destinations_file(governance_dir, ads_customer_list={"format": "parquet", "batch_size": 7})
    nightly.activate(DAY, "night-1")
    bucket, prefix = load_settings().activation_bucket, f"ads_customer_list/attrition_risk/{DAY}/000001/"
    manifest = json.loads(s3_api.get_object(Bucket=bucket, Key=prefix + "manifest.json")["Body"].read())
    wanted = audience("ads_customer_list", "attrition_risk")
    assert manifest["format"] == "parquet" and manifest["adds"] == len(wanted) > 7
    assert [f["rows"] for f in manifest["files"]] == [7] * (len(wanted) // 7) + ([len(wanted) % 7] if len(wanted) % 7 else [])
    rows = set()
    for entry in manifest["files"]:
        local = tmp_path / entry["key"]
        s3_api.download_file(bucket, prefix + entry["key"], str(local))
        rows |= set(duckdb.sql(f"SELECT email_sha256, phone_sha256 FROM '{local}'").fetchall())
    assert rows == wanted
