"""Tier 1: every DAG imports, follows the project's policies and does no work at parse time."""

import subprocess
import sys

import pytest

from partner_pipeline.settings import PROJECT_ROOT
from partner_pipeline.settings import WAREHOUSE_POOL

HEAVY = ("great_expectations", "duckdb", "boto3", "pandas", "dbt", "pyarrow")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "partner_drops_nightly" in dagbag.dag_ids


def test_dag_policies(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.catchup is False, f"{dag_id}: backfills are explicit, not catch-up"
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


def test_warehouse_writers_share_the_single_slot_pool(dagbag):
    dag = dagbag.dags["partner_drops_nightly"]
    assert {t.task_id for t in dag.tasks if t.pool == WAREHOUSE_POOL} == {
        "discover", "publish", "load_first_party", "transform", "data_rights", "activate", "share_overlap_reports", "publish_marts"}
    assert dag.get_task("ingest").pool != WAREHOUSE_POOL  # drops stage in parallel, each in its own file
    assert dag.max_active_runs == 1  # a backfill's dates end as sequential nightly runs would


def test_marts_are_published_after_activation_even_when_a_destination_fails(dagbag):
    dag = dagbag.dags["partner_drops_nightly"]
    assert dag.get_task("activate").upstream_task_ids == {"data_rights"}
    publish = dag.get_task("publish_marts")
    assert publish.upstream_task_ids == {"activate", "share_overlap_reports"} and publish.trigger_rule == "all_done"
    assert dag.params["full_refresh_activation"] is False


def test_no_heavy_imports_or_io_at_parse_time(tmp_path):
    """Parsing the DAG file must not import the pipeline's heavy libraries nor touch S3 or DuckDB
    (partner_pipeline.alerts, the callbacks, is the one pipeline module it imports)."""
    probe = f"""
import sys, runpy
import airflow.sdk
before = set(sys.modules)
runpy.run_path({str(PROJECT_ROOT / 'dags' / 'partner_drops_nightly.py')!r})
print(sorted({{m.split('.')[0] for m in set(sys.modules) - before}} & set({HEAVY!r})))
"""
    # an unreachable endpoint: any S3 call at parse time would hang or fail
    env = {"AIRFLOW_HOME": str(tmp_path), "PIPELINE_S3_ENDPOINT_URL": "http://127.0.0.1:9", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
