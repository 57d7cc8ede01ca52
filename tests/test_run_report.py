"""The run report on a small warehouse built by two nights of the task functions, and the plugin
that serves it (without a running Airflow: the FastAPI app directly)."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys

import pytest

from partner_pipeline import nightly, run_report
from partner_pipeline.agreements import load_agreements
from partner_pipeline.settings import PROJECT_ROOT, load_settings
from partner_pipeline.transform import published_marts
from partner_pipeline.warehouse import warehouse
from partner_pipeline_dev import synth
from conftest import run_night as night

pytestmark = pytest.mark.slow

DAYS = (dt.date(2026, 11, 20), dt.date(2026, 11, 21))
FIGURES = {"match-rate", "rows-acme_bank", "rows-globex_retail", "segment-sizes", "activation"}


@pytest.fixture
def two_nights(pipeline_env, audience_api, s3_api, tmp_path):
    """Two run dates with drops from both partners; the report written after each, as the DAG does."""
    settings = load_settings()
    agreements = load_agreements(settings.agreements_dir)
    root = tmp_path / "synth"
    synth.generate_scenario(root, landing_bucket=settings.landing_bucket, first_party_bucket=settings.first_party_bucket,
                            agreements=agreements, drop_date=DAYS[0], n_profiles=600, rows_per_partner=300, seed=5,
                            bad_row_share=0.03)
    for partner in ("acme_bank", "globex_retail"):
        synth.write_drop(root, settings.landing_bucket, synth.DropSpec(agreements[partner], DAYS[1], rows=250, bad_row_share=0.05),
                         profiles_seed=5, n_profiles=600, seed=6)
    synth.upload_tree(s3_api, root)
    results = {}
    for n, day in enumerate(DAYS):
        night(day, f"night-{n}")
        results[day] = run_report.write_report(day, f"night-{n}")
    return settings, results


def points(page: str, prefix: str) -> dict[str, float]:
    """data-value of every SVG point whose id starts with prefix."""
    return {m[0]: float(m[1]) for m in re.findall(rf'<g id="({re.escape(prefix)}[^"]*)" class="point" data-value="([^"]+)">', page)}


def test_report_figures_and_numbers_equal_the_marts_and_history_is_idempotent(two_nights, s3_api):
    settings, results = two_nights
    page = (settings.reports_dir / f"{DAYS[1]}.html").read_text()
    assert set(re.findall(r"<figure id='([^']+)'>", page)) == FIGURES
    assert page.count("<figcaption>") == len(FIGURES) and page.count("<svg") == len(FIGURES)
    assert "<script" not in page and " src=" not in page and "<link" not in page  # self-contained: nothing to fetch

    with published_marts(settings) as con:
        rates = con.execute("SELECT partner_id, drop_date, match_rate, matched, rows_quarantined FROM match_report").fetchall()
        members = dict(con.execute("SELECT segment_name, count(*) FROM segment_membership GROUP BY 1").fetchall())
        sizes = dict(con.execute("SELECT segment_name, members FROM segments").fetchall())  # customer and prospect segments
        assert members and set(members.items()) <= set(sizes.items())
        sent = con.execute("""SELECT destination_id, segment_name, run_date, sum(adds) FROM activation_log
                              WHERE status = 'sent' GROUP BY ALL""").fetchall()
    assert len(rates) == 4
    assert points(page, "match-rate-") == {f"match-rate-{p}-{d}": float(rate) for p, d, rate, _, _ in rates}
    assert points(page, "rows-acme_bank-matched-") == {f"rows-acme_bank-matched-{d}": m for p, d, _, m, _ in rates if p == "acme_bank"}
    assert points(page, "rows-globex_retail-quarantined-") == {
        f"rows-globex_retail-quarantined-{d}": q for p, d, _, _, q in rates if p == "globex_retail"}
    for partner, day, rate, _, _ in rates:
        if day == DAYS[1]:  # the date's table shows the same rate
            assert re.search(rf"<tr data-partner='{partner}' data-date='{day}'>.*?data-field='match_rate'>{rate * 100:.1f}%<", page)
    # segment sizes over time: one point per segment and run date; today's equal the published marts
    segment_points = points(page, "segment-")
    assert {k.rsplit("-", 3)[0].removeprefix("segment-") for k in segment_points} == set(sizes)
    assert {k: v for k, v in segment_points.items() if k.endswith(str(DAYS[1]))} == {
        f"segment-{s}-{DAYS[1]}": n for s, n in sizes.items()}
    assert len(segment_points) == 2 * len(sizes)
    assert points(page, "activation-") and all(
        points(page, f"activation-{dest}-{seg}-adds-{day}") == {f"activation-{dest}-{seg}-adds-{day}": adds}
        for dest, seg, day, adds in sent)

    # stored in object storage (latest = newest date's), indexed by run id for the run's tab; a local copy
    def stored(key: str) -> str:
        return s3_api.get_object(Bucket=settings.reports_bucket, Key=key)["Body"].read().decode()
    assert stored(f"{DAYS[1]}/report.html") == page and results[DAYS[1]]["uri"] == f"s3://{settings.reports_bucket}/{DAYS[1]}/report.html"
    assert stored("latest.html") == page
    assert json.loads(stored("runs.json")) == {"night-0": str(DAYS[0]), "night-1": str(DAYS[1])}

    def history(columns="run_date, segment_name, members"):
        with warehouse(settings, read_only=True) as con:
            return con.execute(f"SELECT {columns} FROM history.segment_size_history ORDER BY ALL").fetchall()

    before = history()
    assert {d for d, _, _ in before} == set(DAYS)
    assert {(s, n) for d, s, n in before if d == DAYS[1]} == set(sizes.items())  # the segments the page shows
    assert run_report.write_report(DAYS[1], "night-1")["segment_sizes_recorded"] is True
    # re-building a date replaces its rows (model segment_size_history: delete+insert on the date)
    nightly.transform(DAYS[1], "night-1-again")
    assert history() == before
    assert {r for (r,) in history("DISTINCT run_id")} == {"night-0", "night-1-again"}
    # a run whose transform failed: the report is still written, says so, and records no sizes for the date
    summary = run_report.write_report(DAYS[1], "failed-night")
    assert summary["segment_sizes_recorded"] is False and history() == before
    assert "This run built no models" in (settings.reports_dir / f"{DAYS[1]}.html").read_text() == stored("latest.html")
    # an older date written later does not become "latest"
    run_report.write_report(DAYS[0], "night-0")
    assert "run report for 2026-11-21" in stored("latest.html")


def test_segment_size_history_takes_over_the_rows_the_report_task_used_to_write(pipeline_env):
    """A warehouse from before the model: its audit.segment_size_history rows carry over on the first
    build, except the date being built, which the build writes itself."""
    settings = load_settings()
    earlier = [(dt.date(2026, 10, 1), "attrition_risk", 12, "old-night", dt.datetime(2026, 10, 2, tzinfo=dt.UTC)),
               (DAYS[0], "attrition_risk", 99, "stale", dt.datetime(2026, 11, 21, tzinfo=dt.UTC))]
    with warehouse(settings) as con:
        con.execute("""CREATE TABLE audit.segment_size_history (run_date DATE, segment_name VARCHAR, members BIGINT,
                       run_id VARCHAR, recorded_at TIMESTAMPTZ)""")
        con.executemany("INSERT INTO audit.segment_size_history VALUES (?, ?, ?, ?, ?)", earlier)
    nightly.publish([], DAYS[0], "first-build")  # the agreements and destinations the models read
    nightly.transform(DAYS[0], "first-build")
    with warehouse(settings, read_only=True) as con:
        rows = con.execute("SELECT run_date, segment_name, members, run_id FROM history.segment_size_history ORDER BY ALL").fetchall()
        declared = [s for (s,) in con.execute("SELECT segment_name FROM marts.segments ORDER BY 1").fetchall()]
    assert rows == sorted([earlier[0][:4]] + [(DAYS[0], s, 0, "first-build") for s in declared])
    with warehouse(settings) as con:  # the next writer drops the table the model took over
        assert not con.execute("""SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'audit'
                                  AND table_name = 'segment_size_history'""").fetchone()[0]


def test_plugin_serves_reports_to_signed_in_users_only(pipeline_env, s3_api, monkeypatch):
    """The FastAPI app of plugins/partner_report_plugin.py: the reports stored in object storage, to the UI's
    login cookie or a bearer token, else 401."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    bucket = load_settings().reports_bucket
    for key, body in (("2026-11-21/report.html", "<html>report of 21</html>"), ("latest.html", "<html>report of 21</html>"),
                      ("runs.json", json.dumps({"backfill__2026-11-21T02:00:00+00:00": "2026-11-21"}))):
        s3_api.put_object(Bucket=bucket, Key=key, Body=body.encode())
    sys.path.insert(0, str(PROJECT_ROOT / "plugins"))
    try:
        import partner_report_plugin as plugin
    finally:
        sys.path.remove(str(PROJECT_ROOT / "plugins"))

    async def authorized(token):
        return token == "good"

    monkeypatch.setattr(plugin, "_authorized", authorized)
    airflow_api = FastAPI()  # the api-server mounts the plugin's app at its url_prefix
    airflow_api.mount(plugin.PREFIX, plugin.app)
    client = TestClient(airflow_api, base_url="http://testserver/partner-report/")
    assert client.get("latest").status_code == 401
    assert client.get("latest", cookies={"_token": "bad"}).status_code == 403
    for path in ("latest", "2026-11-21", "runs/backfill__2026-11-21T02%3A00%3A00%2B00%3A00"):  # as the UI encodes {RUN_ID}
        response = client.get(path, headers={"Authorization": "Bearer good"})
        assert response.status_code == 200 and response.text == "<html>report of 21</html>", path
    redirect = client.get("http://testserver/partner-report", cookies={"_token": "good"}, follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"].endswith("partner-report/")
    index = client.get("http://testserver/partner-report/", cookies={"_token": "good"})
    assert index.status_code == 200 and "href='2026-11-21'" in index.text
    missing = client.get("2026-11-19", cookies={"_token": "good"})
    assert missing.status_code == 404 and "2026-11-19/report.html" in missing.text and "re-run" in missing.text
    assert client.get("..%2F..%2Fetc%2Fpasswd", cookies={"_token": "good"}).status_code in (404, 422)


def test_plugin_imports_no_heavy_library(tmp_path):
    """Every Airflow component loads the plugins folder: the plugin must stay light to import."""
    probe = f"""
import sys
sys.path.insert(0, {str(PROJECT_ROOT / 'plugins')!r})
before = set(sys.modules)
import partner_report_plugin
print(sorted({{m.split('.')[0] for m in set(sys.modules) - before}} & {{'duckdb', 'matplotlib', 'boto3', 'pandas', 'great_expectations', 'dbt'}}))
print(partner_report_plugin.PartnerReportPlugin.external_views)
"""
    out = subprocess.run([sys.executable, "-c", probe], env={"AIRFLOW_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[0] == "[]"
