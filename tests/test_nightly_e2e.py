"""Tier 3: the nightly DAG run in-process by `airflow dags test` against the real local S3 server
and a real DuckDB file, checked against the generator's ground truth."""

from __future__ import annotations

import datetime as dt

import pytest

from partner_pipeline.agreements import load_agreements
from partner_pipeline.settings import load_settings
from partner_pipeline.transform import published_marts
from partner_pipeline.warehouse import warehouse
from partner_pipeline_dev import synth
from partner_pipeline_dev.local_airflow import run_nightly

pytestmark = pytest.mark.e2e
DAY = dt.date(2026, 11, 21)


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    return tmp_path_factory.mktemp("airflow")


def nightly(airflow_home, pipeline_env, day=DAY):
    result = run_nightly(day.isoformat(), airflow_home, pipeline_env)
    assert result.returncode == 0, result.stdout[-5000:]
    assert "state=success" in result.stdout
    return result


def tables(settings) -> dict[str, list]:
    """Each partner's rows in raw.partner_records (as "<partner>__records"), and the quarantined rows."""
    with warehouse(settings, read_only=True) as con:
        partners = [p for (p,) in con.execute("SELECT DISTINCT partner_id FROM raw.partner_records ORDER BY 1").fetchall()]
        found = {f"{p}__records": con.execute("""SELECT * EXCLUDE (loaded_at, run_id, delivered_at) FROM raw.partner_records
                                                 WHERE partner_id = ? ORDER BY ALL""", [p]).fetchall() for p in partners}
        found["quarantined_rows"] = con.execute("SELECT * EXCLUDE (quarantined_at, run_id) FROM raw.quarantined_rows ORDER BY ALL").fetchall()
        return found


def test_nightly_run_rerun_and_redelivery(airflow_home, pipeline_env, audience_api, s3_api, tmp_path):
    settings = load_settings()
    agreements = load_agreements(settings.agreements_dir)
    root = tmp_path / "synth"
    extra = (
        synth.DropSpec(agreement=agreements["acme_bank"], drop_date=DAY, rows=50, partner_id="initech_media"),
        synth.DropSpec(agreement=agreements["acme_bank"], drop_date=DAY, rows=50, partner_id="hooli_data", corruption="missing_success"),
    )
    truth = synth.generate_scenario(root, landing_bucket=settings.landing_bucket, first_party_bucket=settings.first_party_bucket,
                                    agreements=agreements, drop_date=DAY, n_profiles=2000, rows_per_partner=1500, seed=11,
                                    bad_row_share=0.03, extra_drops=extra)
    synth.upload_tree(s3_api, root)

    nightly(airflow_home, pipeline_env)
    first = tables(settings)
    for partner in ("acme_bank", "globex_retail"):
        expected = truth["drops"][f"{partner}/{DAY}"]
        assert len(first[f"{partner}__records"]) == expected["rows_valid"]
        with warehouse(settings, read_only=True) as con:
            by_rule = dict(con.execute("""SELECT rule, count(*) FROM (SELECT unnest(failed_rules) AS rule FROM raw.quarantined_rows
                                          WHERE partner_id = ?) GROUP BY rule""", [partner]).fetchall())
        assert by_rule == expected["invalid_by_rule"]
    with warehouse(settings, read_only=True) as con:
        outcomes = dict(con.execute("""SELECT partner_id, arg_max(event, rowid) FROM audit.drop_events
                                       GROUP BY partner_id""").fetchall())
        run_ids = {r for (r,) in con.execute("SELECT DISTINCT run_id FROM audit.drop_events").fetchall()}
    assert outcomes == {"acme_bank": "loaded", "globex_retail": "loaded", "initech_media": "quarantined", "hooli_data": "incomplete"}
    assert len(run_ids) == 1 and next(iter(run_ids)).startswith("manual__")
    report = s3_api.list_objects_v2(Bucket=settings.quarantine_bucket, Prefix=f"initech_media/{DAY}/")["Contents"]
    assert any(o["Key"].endswith("report.json") for o in report)
    assert_marts_equal_ground_truth(settings, truth)
    # activation: the API holds exactly the sendable members; the file export's list has as many rows
    for segment in ("high_earning_homeowners", "upsell_prospects"):
        assert len(audience_api.members(segment)) == truth["sendable"][segment] > 0
    with published_marts(settings) as con:
        exported = dict(con.execute("""SELECT destination_id || '/' || segment_name, sum(adds) FROM activation_log
                                       WHERE status = 'sent' GROUP BY 1""").fetchall())
    assert exported["ads_customer_list/attrition_risk"] == truth["sendable"]["attrition_risk"] > 0
    assert exported["crm_email/upsell_prospects"] == truth["sendable"]["upsell_prospects"]
    requests = len(audience_api.requests)

    # A re-run of the same date ends in the same state: unchanged drops are recognised and skipped,
    # and nothing is sent again.
    nightly(airflow_home, pipeline_env)
    assert tables(settings) == first
    assert len(audience_api.requests) == requests
    with warehouse(settings, read_only=True) as con:
        last = dict(con.execute("""SELECT partner_id, arg_max(event, rowid) FROM audit.drop_events GROUP BY partner_id""").fetchall())
    assert last == {"acme_bank": "skipped", "globex_retail": "skipped", "initech_media": "skipped", "hooli_data": "incomplete"}

    # A re-delivery (a correction) replaces the earlier delivery of that date wholly.
    corrected = synth.write_drop(root, settings.landing_bucket, synth.DropSpec(agreements["acme_bank"], DAY, rows=700, bad_row_share=0.02),
                                 profiles_seed=11, n_profiles=2000, seed=99)
    synth.upload_tree(s3_api, root)
    nightly(airflow_home, pipeline_env)
    after = tables(settings)
    assert len(after["acme_bank__records"]) == corrected["rows_valid"]
    assert after["globex_retail__records"] == first["globex_retail__records"]
    with warehouse(settings, read_only=True) as con:
        assert con.execute("SELECT count(DISTINCT delivery_id) FROM raw.partner_records WHERE partner_id = 'acme_bank'").fetchone()[0] == 1


def assert_marts_equal_ground_truth(settings, truth):
    with published_marts(settings) as con:
        report = con.execute("""SELECT partner_id, rows_valid, matched_by_email, matched_by_phone, unmatched, ambiguous
                                FROM match_report WHERE drop_date = ?""", [DAY]).fetchall()
        segments = dict(con.execute("SELECT segment_name, count(*) FROM segment_membership GROUP BY 1").fetchall())
    assert {r[0] for r in report} == {"acme_bank", "globex_retail"}
    for partner_id, valid, by_email, by_phone, unmatched, ambiguous in report:
        expected = truth["drops"][f"{partner_id}/{DAY}"]
        matches = expected["expected_matches"]
        assert (valid, by_email, by_phone, unmatched, ambiguous) == (
            expected["rows_valid"], matches["by_email"], matches["by_phone"], matches["unmatched"], matches["ambiguous"])
    assert segments == truth["segments"] and min(segments.values()) > 0


def test_a_date_with_no_drops_ends_green(airflow_home, pipeline_env):
    nightly(airflow_home, pipeline_env, day=dt.date(2026, 11, 1))
    with warehouse(load_settings(), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM audit.drop_events").fetchone()[0] == 0


def test_make_run_uploads_a_folder_and_reports_the_night(airflow_home, pipeline_env, tmp_path, monkeypatch, capsys):
    """`make run DATE=... UPLOAD=...` (partner_pipeline_dev.run) on a folder laid out <bucket>/<key>; the
    quarantined drop is also alerted to a webhook by the DAG's callback."""
    from partner_pipeline_dev import run
    from test_alerts import Webhook

    settings = load_settings()
    agreements = load_agreements(settings.agreements_dir)
    folder = tmp_path / "mine"
    synth.write_drop(folder, settings.landing_bucket, synth.DropSpec(agreements["acme_bank"], DAY, rows=40, corruption="special_category_column"),
                     profiles_seed=1, n_profiles=100, seed=1)
    with Webhook() as hook:
        alert_env = {**pipeline_env, "PIPELINE_ALERT_WEBHOOK_URL": hook.url}
        monkeypatch.setattr(run, "run_nightly", lambda day, home, env: run_nightly(day, airflow_home, {**alert_env, **env}))
        assert run.main(["--date", DAY.isoformat(), "--upload", str(folder)]) == 0
    [alert] = [m for m in hook.received if m["kind"] == "drop_quarantined"]
    assert (alert["partner_id"], alert["drop_date"]) == ("acme_bank", DAY.isoformat())
    assert "special_category_column" in alert["text"] and "health_condition" in alert["text"]
    printed = capsys.readouterr().out
    assert "uploaded 3 objects" in printed
    assert "acme_bank       quarantined  quarantined" in printed
    assert "special_category_column: acme_bank/2026-11-21/records-000.csv.gz column health_condition" in printed


def test_make_demo_two_nights_match_the_ground_truth(pipeline_env, agreements_dir, capsys):
    """`make demo` at a small size, through `airflow dags test` twice: night one (loads, segments, the
    prospect audience sent, Acme's seed set exported) and night two (Acme's drop keyed by the seeds it
    received, matched by seed, the scorecard's seed reconciliation) each checked by the demo against the
    generator's ground truth; the demo exits 1 on any mismatch."""
    import re

    from partner_pipeline_dev import demo

    settings = load_settings()
    for path in agreements_dir.glob("*.yaml"):  # this test's outbox, not the fixed one an agreement names
        path.write_text(re.sub(r"^outbox_uri: .*$", f"outbox_uri: s3://{settings.outbox_bucket}/{path.stem}/", path.read_text(), flags=re.M))
    assert demo.main(["--profiles", "3000", "--rows", "1500"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"globex_loyal_prospects +prospect_ads +sent +[1-9]", printed)
    [(by_seed, sent, returned)] = re.findall(r"\n  acme_bank +(\d+) +\d+ +0 +0 +(?:\1) +0 +0 +0 +100\.0%\n(?:.|\n)*"
                                             r"seed date 2026-11-21: (\d+) sent, (\d+) returned with data", printed)
    assert int(by_seed) == int(returned) > 0.7 * int(sent) > 0
    assert "The seed-keyed drops match the generator's ground truth." in printed
