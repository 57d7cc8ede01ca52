"""A backfill through the REST API v2 against a real local Airflow (`make airflow`: scheduler,
LocalExecutor, api-server, the embedded S3 server and audience API), compared with the same dates
run one after the other by `airflow dags test`; then the run report, through the Airflow plugin,
in headless Chromium (one Airflow start serves both tests)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import duckdb
import pytest
from browser import Chromium
from test_local_airflow import free_port

from partner_pipeline.agreements import load_agreements
from partner_pipeline.analysts import export
from partner_pipeline.settings import load_settings
from partner_pipeline.transform import published_marts
from partner_pipeline.warehouse import warehouse
from partner_pipeline.storage import s3_client
from partner_pipeline_dev import synth
from partner_pipeline_dev.local_airflow import DAG_ID, run_nightly
from partner_pipeline_dev.local_s3 import ACCESS_KEY, SECRET_KEY

# the module fixture runs a 3-date backfill through a real Airflow and then 3 nights by `airflow dags test`:
# about 10 minutes on an idle 2-core machine, so above the suite's 600 s per test
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

# Columns that legitimately differ between the backfill and the sequential nights, per published table:
EXCLUDED = {
    # when each event was recorded and by which Airflow run (backfill__... vs manual__...); and its id, which
    # numbers events in the order the drops' ingest tasks commit, side by side (each drop's own order is compared)
    "drop_audit": ("recorded_at", "run_id", "event_id"),
    "drop_states": ("recorded_at", "run_id", "event_id"),
    # when the partner row was loaded into the warehouse
    "profile_partner_attributes": ("loaded_at",),
    # when each batch was sent and by which run (ids, adds, removes, Idempotency-Keys and statuses must be equal)
    "activation_log": ("logged_at", "run_id"),
    # when each destination was last synced and by which runs (batches applied and members held must be equal)
    "activation_syncs": ("last_synced_at", "last_run_id", "full_refresh_run_id"),
    # hours from the drop date to its _SUCCESS: the same drops were uploaded to the two stores minutes apart
    "partner_scorecard": ("delivery_lag_hours",),
}


@dataclass
class Airflow:
    url: str
    data: Path
    token: str

    def api(self, method: str, path: str, body: dict | None = None, attempts: int = 5) -> dict:
        request = urllib.request.Request(f"{self.url}/api/v2/{path}", method=method, data=json.dumps(body).encode() if body else None,
                                         headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        for attempt in range(attempts):
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return json.loads(response.read() or b"null")
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode()[:2000]
                # SQLite metadata (make airflow): a write may meet the scheduler's lock; Airflow answers 503
                if exc.code != 503 or attempt == attempts - 1:
                    raise AssertionError(f"{method} {path}: {exc.code} {detail}") from None
                time.sleep(3)

    def s3(self):
        return s3_client((self.data / "s3" / "endpoint").read_text(), ACCESS_KEY, SECRET_KEY)

    def settings(self):
        """The settings the local Airflow runs with (the defaults: the fixture passes it no PIPELINE_* variable),
        reaching its S3 server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
        env |= {"PIPELINE_DATA_DIR": str(self.data), "PIPELINE_S3_ENDPOINT_URL": (self.data / "s3" / "endpoint").read_text(),
                "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        with mock.patch.dict(os.environ, env, clear=True):
            return load_settings()


def wait(what: str, check, timeout: float, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)
    return result


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """`make airflow` (python -m partner_pipeline_dev.local_airflow PORT) on a fresh data dir, stopped with SIGINT."""
    data = tmp_path_factory.mktemp("airflow-ui") / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "AIRFLOW_CONN_"))}
    env["PIPELINE_DATA_DIR"] = str(data)  # no PIPELINE_S3_ENDPOINT_URL: the embedded S3 server and audience API
    proc = subprocess.Popen([sys.executable, "-m", "partner_pipeline_dev.local_airflow", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy():
            try:
                with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5) as response:
                    return '"scheduler":{"status":"healthy"' in response.read().decode()
            except OSError:
                assert proc.poll() is None, f"local Airflow exited: {proc.stdout.read()[-3000:]}"
        wait("local Airflow healthy", healthy, 240)
        password = json.loads((data / "airflow" / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        login = urllib.request.Request(f"{url}/auth/token", data=json.dumps({"username": "admin", "password": password}).encode(),
                                       headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(login, timeout=30) as response:
            airflow = Airflow(url, data, json.loads(response.read())["access_token"])

        def parsed():
            try:
                return airflow.api("GET", f"dags/{DAG_ID}")
            except AssertionError:
                return None
        wait("the DAG parsed by the dag-processor", parsed, 120)
        assert airflow.api("GET", "importErrors")["total_entries"] == 0
        yield airflow
    finally:
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends: standalone stops its components
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise


def server_settings():
    """The settings the local Airflow runs with: the defaults (the fixture passes it no PIPELINE_* variable)."""
    with mock.patch.dict(os.environ, {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}, clear=True):
        return load_settings()


def drops(root: Path, first: dt.date, last: dt.date) -> None:
    """A first-party snapshot and both partners' drops on the first date, new drops on the last."""
    settings = server_settings()
    agreements = load_agreements(settings.agreements_dir)
    synth.generate_scenario(root, landing_bucket=settings.landing_bucket, first_party_bucket=settings.first_party_bucket,
                            agreements=agreements, drop_date=first, n_profiles=1000, rows_per_partner=400, seed=7,
                            bad_row_share=0.03)
    for partner in ("acme_bank", "globex_retail"):
        synth.write_drop(root, settings.landing_bucket, synth.DropSpec(agreements[partner], last, rows=350, bad_row_share=0.04),
                         profiles_seed=7, n_profiles=1000, seed=20)


def sequential_nights(data: Path, root: Path, days: list[dt.date]) -> Path:
    """The same drops, each date run after the other by `airflow dags test`, in a data dir of its own;
    returns the published marts exported to a file (the nights' S3 server stops after them)."""
    from partner_pipeline_dev.services import embedded_services

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "AIRFLOW_CONN_"))}  # as the server's
    with mock.patch.dict(os.environ, {**clean, "PIPELINE_DATA_DIR": str(data)}, clear=True):
        settings = load_settings()
        with embedded_services(settings) as env:
            synth.upload_tree(s3_client(env["PIPELINE_S3_ENDPOINT_URL"], ACCESS_KEY, SECRET_KEY), root)
            for day in days:
                result = run_nightly(day.isoformat(), data / "airflow", env)
                assert result.returncode == 0 and "state=success" in result.stdout, result.stdout[-5000:]
            export(load_settings(), data / "published-export.duckdb")
    return data / "published-export.duckdb"


@pytest.fixture(scope="module")
def backfilled(airflow, tmp_path_factory):
    """A backfill of three dates over the REST API (the middle one with no drops), with max_active_runs
    above 1; then the same three dates as sequential nights elsewhere."""
    tmp = tmp_path_factory.mktemp("backfill")
    # the backfill ends at the date the scheduler would run next, so unpausing starts no other run
    last = dt.datetime.fromisoformat(airflow.api("GET", f"dags/{DAG_ID}")["next_dagrun_logical_date"]).date()
    days = [last - dt.timedelta(days=2), last - dt.timedelta(days=1), last]
    drops(tmp / "synth", days[0], last)
    synth.upload_tree(airflow.s3(), tmp / "synth")

    started = time.monotonic()
    backfill = airflow.api("POST", "backfills", {"dag_id": DAG_ID, "from_date": f"{days[0]}T00:00:00Z",
                                                 "to_date": f"{last}T23:59:59Z", "max_active_runs": 3,
                                                 "reprocess_behavior": "completed"})
    airflow.api("PATCH", f"dags/{DAG_ID}", {"is_paused": False})  # backfill runs only start on an unpaused DAG

    def finished():
        runs = airflow.api("GET", f"dags/{DAG_ID}/dagRuns?run_type=backfill&order_by=logical_date")["dag_runs"]
        return runs if len(runs) == 3 and all(r["state"] in ("success", "failed") for r in runs) else None
    runs = wait("the backfill's runs", finished, 600, every=3)
    print(f"\nbackfill of 3 dates: {time.monotonic() - started:.0f}s")
    tis = airflow.api("POST", "dags/~/dagRuns/~/taskInstances/list", {"dag_ids": [DAG_ID], "page_limit": 500})["task_instances"]
    started = time.monotonic()
    sequential = sequential_nights(tmp / "sequential", tmp / "synth", days)
    print(f"3 sequential nights (airflow dags test): {time.monotonic() - started:.0f}s")
    return {"backfill": backfill, "runs": runs, "tis": tis, "days": days, "sequential": sequential}


def test_backfill_over_the_api_ends_as_sequential_nights(airflow, backfilled):
    runs, days = backfilled["runs"], backfilled["days"]
    assert backfilled["backfill"]["max_active_runs"] == 3
    assert [(r["logical_date"][:10], r["state"]) for r in runs] == [(str(d), "success") for d in days]
    # no lock failure, whatever the concurrency: every task succeeded (or was skipped) on its first try
    assert {(t["task_id"], t["state"], t["try_number"]) for t in backfilled["tis"]
            if t["state"] != "success" or t["try_number"] != 1} <= {("ingest", "skipped", 0)}
    # the three runs started together, yet ran one after the other, in date order
    at = dt.datetime.fromisoformat
    windows = [(min(at(t["start_date"]) for t in backfilled["tis"] if t["dag_run_id"] == r["dag_run_id"] and t["start_date"]
                    and t["task_id"] != "previous_date_done"), at(r["end_date"])) for r in runs]
    assert all(end <= next_start for (_, end), (next_start, _) in zip(windows, windows[1:])), windows
    started = [at(r["start_date"]) for r in runs]
    assert max(started) - min(started) < dt.timedelta(seconds=30)  # started together: waiting at the first task
    # the date with no drops ended green with nothing done: no drop, nothing sent
    settings = airflow.settings()
    with warehouse(settings, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM audit.drop_events WHERE drop_date = ?", [days[1]]).fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM activation.activation_log WHERE run_date = ?", [days[1]]).fetchone()[0] == 0
    export(settings, settings.data_dir / "published-export.duckdb")
    assert_published_equal(settings.data_dir / "published-export.duckdb", backfilled["sequential"])


def assert_published_equal(backfill: Path, sequential: Path) -> None:
    with duckdb.connect(str(backfill), read_only=True) as a, duckdb.connect(str(sequential), read_only=True) as b:
        tables = [t for (t,) in a.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]
        assert tables == [t for (t,) in b.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]
        assert "match_report" in tables and "activation_log" in tables
        for table in tables:
            exclude = f"EXCLUDE ({', '.join(EXCLUDED[table])})" if table in EXCLUDED else ""
            query = f'SELECT * {exclude} FROM "{table}" ORDER BY ALL'
            rows = a.execute(query).fetchall()
            assert rows == b.execute(query).fetchall(), f"published table {table} differs from the sequential nights"
            assert rows or table not in ("match_report", "segment_membership", "activation_log"), f"{table} is empty"
        events = "SELECT partner_id, delivery_id, list(event ORDER BY event_id) FROM drop_audit GROUP BY ALL ORDER BY ALL"
        assert a.execute(events).fetchall() == b.execute(events).fetchall()


def test_run_report_in_the_airflow_ui_in_headless_chromium(airflow, backfilled):
    last = backfilled["days"][-1]
    with published_marts(airflow.settings()) as con:
        rates = dict(con.execute("SELECT partner_id, match_rate FROM match_report WHERE drop_date = ?", [last]).fetchall())
        sizes = dict(con.execute("SELECT segment_name, count(*) FROM segment_membership GROUP BY 1").fetchall())
        declared = [s for (s,) in con.execute("SELECT segment_name FROM segments").fetchall()]  # prospect segments too
    assert set(rates) == {"acme_bank", "globex_retail"}
    # written to object storage too
    stored = airflow.s3().get_object(Bucket=server_settings().reports_bucket, Key=f"{last}/report.html")["Body"].read().decode()
    assert stored == (airflow.data / "reports" / f"{last}.html").read_text()

    with Chromium() as browser:
        browser.open(f"{airflow.url}/partner-report/latest")
        assert "Not signed in" in browser.evaluate("document.body.innerText")  # Airflow's login guards the reports
        browser.set_cookie(airflow.url, "_token", airflow.token)  # what the UI's sign-in sets
        browser.open(f"{airflow.url}/partner-report/latest")
        page = browser.evaluate("""(() => {
            const figures = [...document.querySelectorAll('figure')].map(f => ({
                id: f.id, caption: f.querySelector('figcaption')?.textContent || '',
                points: [...f.querySelectorAll('svg g.point')].map(g => [g.id, +g.dataset.value, g.querySelector('title').textContent]),
                paths: f.querySelectorAll('svg path').length}));
            const rate = p => document.querySelector(`tr[data-partner="${p}"] td[data-field="match_rate"]`)?.textContent;
            return {title: document.title, figures, rates: {acme_bank: rate('acme_bank'), globex_retail: rate('globex_retail')},
                    segments: Object.fromEntries([...document.querySelectorAll('#segments-today tr[data-segment]')]
                        .map(r => [r.dataset.segment, r.querySelector('[data-field="members"]').textContent]))};
        })()""")
        assert page["title"] == f"Run report {last}"
        figures = {f["id"]: f for f in page["figures"]}
        assert set(figures) == {"match-rate", "rows-acme_bank", "rows-globex_retail", "segment-sizes", "activation"}
        assert all(f["caption"] and f["paths"] > 10 for f in figures.values())
        days = [str(d) for d in backfilled["days"][::2]]  # the date with no drops has no point
        for partner, rate in rates.items():
            assert page["rates"][partner] == f"{rate * 100:.1f}%"
            points = {i: v for i, v, _ in figures["match-rate"]["points"] if i.startswith(f"match-rate-{partner}-")}
            assert sorted(points) == [f"match-rate-{partner}-{d}" for d in days]
            assert points[f"match-rate-{partner}-{last}"] == pytest.approx(float(rate))
        segment_points = {i: (v, title) for i, v, title in figures["segment-sizes"]["points"]}
        for segment, size in sizes.items():
            assert page["segments"][segment] == f"{size:,}"
            assert segment_points[f"segment-{segment}-{last}"] == (size, f"{segment} on {last}: {size:,} members")
        assert len(segment_points) == len(declared) * 3  # each date of the backfill recorded its own sizes

        # reachable from the UI: Browse > Run reports shows the plugin's list inside the UI ...
        browser.open(f"{airflow.url}/")
        entry = browser.wait_for("""(() => {
            const item = [...document.querySelectorAll('[role=menuitem]')].find(e => e.textContent.trim() === 'Run reports');
            if (item) return item.getAttribute('href') || item.querySelector('a')?.getAttribute('href');
            // the menu lists plugins once the UI has fetched them: open (or close) it until the entry shows
            [...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Browse')?.click();
        })()""", every=1.0)
        assert entry == "/plugin/partner-run-reports"
        browser.open(f"{airflow.url}{entry}")
        frame = browser.wait_for("document.querySelector('iframe')?.contentDocument?.querySelector('h1')?.textContent")
        assert frame == f"Run reports of {DAG_ID}"
        # ... and each run has a "Run report" tab showing its own date's report
        run = backfilled["runs"][-1]["dag_run_id"]
        browser.open(f"{airflow.url}/dags/{DAG_ID}/runs/{urllib.parse.quote(run, safe='')}/plugin/partner-run-report")
        title = browser.wait_for("document.querySelector('iframe')?.contentDocument?.title")
        assert title == f"Run report {last}"
