"""Shared fixtures: one real S3 server (SeaweedFS on loopback) per test session, fresh buckets
and a fresh data directory per test, so tests never see each other's drops or warehouse."""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import shutil
import sqlite3
from pathlib import Path

import tempfile

import pytest

# Before anything imports Airflow: never touch ~/airflow, never load the example DAGs. Each pytest-xdist
# worker (make test runs two) makes a home of its own: a worker inherits the controller's, and two workers
# on one home would share its SQLite metadata database.
if "AIRFLOW_HOME" not in os.environ or "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow_home_")
    atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["GX_ANALYTICS_ENABLED"] = "False"

from partner_pipeline.settings import PROJECT_ROOT, load_settings
from partner_pipeline.storage import ensure_buckets, s3_client
from partner_pipeline_dev.local_audience_api import AudienceApi
from partner_pipeline_dev.local_postgres import local_postgres
from partner_pipeline_dev.local_s3 import local_s3

_bucket_numbers = itertools.count()


# An analyst's keys on the S3 server, as a team deployment gives them: read only the analysts' tables
# (lake.analyst_prefixes) of the lake in bucket ANALYST_LAKE_BUCKET.
ANALYST_LAKE_BUCKET = "analyst-lake"
ANALYST_KEYS = {"AWS_ACCESS_KEY_ID": "analyst-key", "AWS_SECRET_ACCESS_KEY": "analyst-secret-0123456789"}


def pytest_collection_modifyitems(items):
    """The longest tiers first, each in file order: end to end, then slow, then the units. make test
    runs the files on two workers as this order hands them out (--no-loadscope-reorder): a long file
    handed out last would keep one worker busy long after the other ran out of files."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("e2e") else 1 if item.get_closest_marker("slow") else 2)


def write_stage(stage: Path, columns: list[str], rows: list[dict], issued_seeds: tuple[str, ...] = ()) -> Path:
    """A drop's stage as staging.stage_drop lays it out (contracts.StageFile), from rows given as dicts
    (a column a row leaves out is NULL): one Parquet part, the records view over it, the issued seeds."""
    import duckdb

    from partner_pipeline.contracts import StageFile
    from partner_pipeline.sqltext import quote_ident, quote_path

    part = StageFile.part_path(stage, 0)
    part.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(stage)) as con:
        con.execute("CREATE TEMP TABLE delivered (" + ", ".join(f"{quote_ident(c)} VARCHAR" for c in columns)
                    + f", {StageFile.SOURCE_FILE} VARCHAR, {StageFile.SOURCE_ROW} BIGINT, {StageFile.ROW} BIGINT)")
        for n, row in enumerate(rows, start=1):
            con.execute(f"INSERT INTO delivered VALUES ({', '.join('?' * (len(columns) + 3))})",
                        [*(row.get(c) for c in columns), "records-000.csv", n, n])
        con.execute(f"COPY delivered TO {quote_path(part)} ({StageFile.PART_OPTIONS})")
        con.execute(StageFile.records_view_ddl([part], quote_path))
        con.execute(StageFile.issued_seeds_ddl())
        for seed_id in issued_seeds:
            con.execute(f"INSERT INTO {StageFile.ISSUED_SEEDS} VALUES (?)", [seed_id])
    return stage


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from partner_pipeline.lake import analyst_prefixes

    analyst = {"name": "analyst", "credentials": [{"accessKey": ANALYST_KEYS["AWS_ACCESS_KEY_ID"],
                                                   "secretKey": ANALYST_KEYS["AWS_SECRET_ACCESS_KEY"]}],
               "actions": [f"Read:{prefix.removeprefix('s3://')}*" for prefix in analyst_prefixes(f"s3://{ANALYST_LAKE_BUCKET}/")]}
    with local_s3(tmp_path_factory.mktemp("s3"), identities=(analyst,)) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL on loopback per session (the team configuration's DuckLake catalog)."""
    root = postgres_dir()
    try:
        with local_postgres(root) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


def postgres_dir() -> Path:
    """A directory for a PostgreSQL cluster. Not tmp_path: as root, PostgreSQL runs as `nobody`, who
    cannot enter pytest's /tmp/pytest-of-root (0700)."""
    return Path(tempfile.mkdtemp(prefix="local-postgres-"))


@pytest.fixture
def agreements_dir(tmp_path) -> Path:
    """A private copy of the project's agreements, so a test may add or edit partners."""
    target = tmp_path / "agreements"
    shutil.copytree(PROJECT_ROOT / "include" / "agreements", target)
    return target


@pytest.fixture
def pipeline_env(s3_server, tmp_path, agreements_dir, monkeypatch) -> dict[str, str]:
    """Point the pipeline at fresh buckets and a fresh data directory; returns the variables set."""
    n = next(_bucket_numbers)
    env = {
        **s3_server.env(),
        "PIPELINE_LANDING_BUCKET": f"landing-{os.getpid()}-{n}",
        "PIPELINE_FIRST_PARTY_BUCKET": f"first-party-{os.getpid()}-{n}",
        "PIPELINE_QUARANTINE_BUCKET": f"quarantine-{os.getpid()}-{n}",
        "PIPELINE_OUTBOX_BUCKET": f"outbox-{os.getpid()}-{n}",
        "PIPELINE_ACTIVATION_BUCKET": f"activation-{os.getpid()}-{n}",
        "PIPELINE_REPORTS_BUCKET": f"reports-{os.getpid()}-{n}",
        "PIPELINE_LAKE_BUCKET": f"lake-{os.getpid()}-{n}",
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "PIPELINE_AGREEMENTS_DIR": str(agreements_dir),
        "AIRFLOW_VAR_SEED_SECRET_ACME_BANK": "test-seed-key-acme-bank-0123456789abcdef",  # the seed_id key (seeds.py)
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("PIPELINE_LAKE_CATALOG", "PIPELINE_LAKE_CATALOG_PASSWORD", "PIPELINE_LAKE_DATA_PATH"):
        monkeypatch.delenv(key, raising=False)  # the embedded lake under the test's own data dir and bucket
    settings = load_settings()
    ensure_buckets(s3(s3_server), [settings.landing_bucket, settings.first_party_bucket, settings.quarantine_bucket,
                                   settings.outbox_bucket, settings.activation_bucket, settings.reports_bucket, settings.lake_bucket])
    return env


@pytest.fixture
def governance_dir(tmp_path, monkeypatch) -> Path:
    """A private copy of the governance files (policies, destinations), so a test may edit them."""
    target = tmp_path / "governance"
    shutil.copytree(PROJECT_ROOT / "include" / "governance", target)
    monkeypatch.setenv("PIPELINE_GOVERNANCE_DIR", str(target))
    return target


@pytest.fixture
def audience_api(monkeypatch):
    """The loopback audience API as destination personalization_api, reached through the Airflow
    connection the destination names (AIRFLOW_CONN_PERSONALIZATION_API)."""
    with AudienceApi(token="test-token", hash_profile="uid2") as api:
        monkeypatch.setenv("AIRFLOW_CONN_PERSONALIZATION_API",
                           json.dumps({"conn_type": "http", "host": api.url, "password": api.token}))
        yield api


def s3(server):
    return s3_client(server.endpoint_url, server.access_key, server.secret_key)


@pytest.fixture
def s3_api(s3_server):
    return s3(s3_server)


def run_night(day, run_id: str, from_task: str = "discover") -> None:
    """One nightly run, every task function in the DAG's order (as `airflow dags test` runs them); from
    `from_task` on, as Airflow retries a failed task and runs the ones after it."""
    from partner_pipeline import nightly

    tasks = {  # discover, ingest and publish as one (publish takes ingest's outcomes)
        "discover": lambda: nightly.publish([nightly.ingest(d, run_id) for d in nightly.discover(day, run_id)], day, run_id),
        "load_first_party": lambda: nightly.load_first_party(day),
        "transform": lambda: nightly.transform(day, run_id),
        "data_rights": lambda: nightly.data_rights(day, run_id),
        "activate": lambda: nightly.activate(day, run_id),
        "share_overlap_reports": lambda: nightly.share_overlap_reports(day, run_id),
        "export_seeds": lambda: nightly.export_seeds(day, run_id),
        "publish_marts": lambda: nightly.publish_marts(day, run_id),
    }
    names = list(tasks)
    for name in names[names.index(from_task):]:
        tasks[name]()


BUILT_DAY = __import__("datetime").date(2026, 11, 21)


@pytest.fixture(scope="session")
def built(tmp_path_factory, s3_server):
    """One scenario ingested and built once (up to the dbt build) for the whole session; tests that
    only read or sync from it take a copy of its warehouse (warehouse_copy)."""
    from partner_pipeline import nightly
    from partner_pipeline.agreements import load_agreements
    from partner_pipeline_dev import synth

    root = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as mp:
        env = {**s3_server.env(), "PIPELINE_DATA_DIR": str(root / "data"), "PIPELINE_LANDING_BUCKET": "built-landing",
               "PIPELINE_FIRST_PARTY_BUCKET": "built-first-party", "PIPELINE_QUARANTINE_BUCKET": "built-quarantine",
               "PIPELINE_LAKE_BUCKET": "built-lake"}
        for key, value in env.items():
            mp.setenv(key, value)
        for key in ("PIPELINE_LAKE_CATALOG", "PIPELINE_LAKE_CATALOG_PASSWORD", "PIPELINE_LAKE_DATA_PATH"):
            mp.delenv(key, raising=False)
        settings = load_settings()
        truth = synth.generate_scenario(root / "synth", landing_bucket=settings.landing_bucket,
                                        first_party_bucket=settings.first_party_bucket,
                                        agreements=load_agreements(settings.agreements_dir), drop_date=BUILT_DAY,
                                        n_profiles=5000, rows_per_partner=4000, seed=5, bad_row_share=0.01)
        synth.upload_tree(s3(s3_server), root / "synth")
        outcomes = [nightly.ingest(d, "build") for d in nightly.discover(BUILT_DAY, "build")]
        nightly.publish(outcomes, BUILT_DAY, "build")
        nightly.load_first_party(BUILT_DAY)
        nightly.transform(BUILT_DAY, "build")
        return {"settings": settings, "dbt_target": root / "data" / "dbt" / "target", "truth": truth}


@pytest.fixture
def warehouse_copy(built, pipeline_env, governance_dir, s3_api):
    """A fresh copy of the built warehouse, with the test's own buckets and governance files."""
    settings = load_settings()
    copy_warehouse(built["settings"], settings, s3_api)
    return settings


def copy_warehouse(source, target, client) -> None:
    """Copy one warehouse to another place: the DuckDB files; or a lake's catalog file and data files
    (into the target's bucket, the copied catalog's data path pointed at them)."""
    if source.warehouse_kind == "file":
        target.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source.warehouse_path, target.warehouse_path)
        shutil.copy(source.marts_path, target.marts_path)
        return
    Path(target.lake_catalog).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source.lake_catalog, target.lake_catalog)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=source.lake_bucket):
        for item in page.get("Contents", []):
            client.copy_object(Bucket=target.lake_bucket, Key=item["Key"],
                               CopySource={"Bucket": source.lake_bucket, "Key": item["Key"]})
    with contextlib.closing(sqlite3.connect(target.lake_catalog)) as catalog, catalog:
        catalog.execute("UPDATE ducklake_metadata SET value = ? WHERE key = 'data_path'", [target.lake_data_path])


@pytest.fixture
def own_environment():
    """make bench sets its servers' variables in os.environ for its child processes; put them back."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
