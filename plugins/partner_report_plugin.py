"""The run reports in the Airflow UI: an Airflow 3 plugin served by the api-server.

`fastapi_apps` mounts a small app at /partner-report (GET / lists the reports, /latest, /<date>,
/runs/<run id>); `external_views` adds "Run reports" to the UI's Browse menu and a "Run report"
tab to every run of partner_drops_nightly, both shown inside the UI. The pages are those the DAG's
`report` task stores in the reports bucket (partner_pipeline.run_report), so the api-server needs no
directory shared with the workers.

Access is Airflow's own: the JWT cookie the UI sets at sign-in (what the UI's embedded view
sends) or an `Authorization: Bearer` token from POST /auth/token, for a user who may read this
DAG's runs. Every Airflow component imports the plugins folder, so this file imports nothing heavy.
"""

from __future__ import annotations

import datetime as dt
import html

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from airflow.plugins_manager import AirflowPlugin
from partner_pipeline import run_report
from partner_pipeline.settings import load_settings

DAG_ID = "partner_drops_nightly"
PREFIX = "/partner-report"
COOKIE = "_token"  # airflow.api_fastapi.auth.managers.base_auth_manager.COOKIE_NAME_JWT_TOKEN


async def _authorized(token: str) -> bool:
    """May the Airflow user behind this token read the DAG's runs (what a report shows)?"""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    manager = get_auth_manager()
    try:
        user = await manager.get_user_from_token(token)
    except Exception:  # noqa: BLE001 - expired, revoked or forged: all mean "sign in again"
        return False
    return manager.is_authorized_dag(method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=DAG_ID), user=user)


async def signed_in(request: Request) -> None:
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE)
    if not token:
        raise HTTPException(401, "Not signed in: open the report from the Airflow UI (Browse > Run reports), or send "
                                 "'Authorization: Bearer <token>' with a token from POST /auth/token.")
    if not await _authorized(token):
        raise HTTPException(403, f"This sign-in is expired or may not read the runs of {DAG_ID}: sign in to the "
                                 "Airflow UI again, or ask an admin for read access to that DAG.")


app = FastAPI(title="Partner pipeline run reports", dependencies=[Depends(signed_in)])


def _page(day: str | None, hint: str) -> HTMLResponse:
    settings = load_settings()
    page = run_report.stored_page(settings, day)
    if page is None:
        where = f"s3://{settings.reports_bucket}/" + (f"{day}/report.html" if day else run_report.LATEST)
        raise HTTPException(404, f"No report {where}: {hint}")
    return HTMLResponse(page)


@app.get("/", response_class=HTMLResponse)
def index(request: Request) -> Response:
    """Links to every report, newest first (relative links: the app may sit behind a path prefix)."""
    if not request.url.path.endswith("/"):  # /partner-report: the relative links need the slash
        return RedirectResponse(request.url.path.rsplit("/", 1)[-1] + "/")
    days = run_report.stored_days(load_settings())[::-1]
    items = "".join(f"<li><a href='{d}'>{d}</a></li>" for d in days) or "<li>none yet: the DAG's report task writes them</li>"
    return HTMLResponse(f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Run reports</title></head>"
                        f"<body style='font:15px/1.6 system-ui,sans-serif;margin:1.5em'><h1>Run reports of {DAG_ID}</h1>"
                        f"<p><a href='latest'>Latest</a> · one per run date, newest first:</p><ul>{items}</ul></body></html>")


@app.get("/latest", response_class=HTMLResponse)
def latest() -> HTMLResponse:
    return _page(None, "no run has written a report yet; trigger partner_drops_nightly.")


@app.get("/runs/{run_id:path}", response_class=HTMLResponse)
def for_run(run_id: str) -> HTMLResponse:
    """The report of a DAG run (the run's tab in the UI): the report of its logical date."""
    day = run_report.stored_runs(load_settings()).get(run_id)
    if day is None:
        raise HTTPException(404, f"Run {html.escape(run_id)} has written no report: its report task has not "
                                 "run yet; it runs last, also after a failure.")
    return _page(day, f"run {html.escape(run_id)} wrote it, but it was removed since; re-run the run's report task.")


@app.get("/{day}", response_class=HTMLResponse)
def for_date(day: dt.date) -> HTMLResponse:
    return _page(day.isoformat(), f"no run of {DAG_ID} for {day} has written it; run or re-run that date (a backfill).")


class PartnerReportPlugin(AirflowPlugin):
    name = "partner_report"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "Partner pipeline run reports"}]
    # href without a leading slash: relative to the UI's base URL
    external_views = [
        {"name": "Run reports", "href": f"{PREFIX.lstrip('/')}/", "destination": "nav", "category": "browse",
         "url_route": "partner-run-reports"},
        {"name": "Run report", "href": f"{PREFIX.lstrip('/')}/runs/{{RUN_ID}}", "destination": "dag_run",
         "url_route": "partner-run-report"},
    ]
