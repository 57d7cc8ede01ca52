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


@pytest.mark.parametrize("kind, pooled", [
    # the file allows one writing process: every task that writes it
    ("file", {"discover", "publish", "load_first_party", "transform", "data_rights", "activate", "share_overlap_reports",
              "publish_marts", "report", "export_seeds"}),
    # the lake takes writers side by side, but activate may purge it while the other sends run
    ("lake", {"activate", "share_overlap_reports", "export_seeds"})])
def test_only_the_tasks_that_must_write_alone_share_the_single_slot_pool(kind, pooled, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("PIPELINE_WAREHOUSE", kind)  # decided where the DAG is parsed, as the workers are configured
    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).dags["partner_drops_nightly"]
    assert {t.task_id for t in dag.tasks if t.pool == WAREHOUSE_POOL} == pooled
    assert {t.pool for t in dag.tasks if t.task_id not in pooled} == {"default_pool"}
    assert dag.get_task("ingest").pool != WAREHOUSE_POOL  # drops stage in parallel, each in its own file
    assert dag.max_active_runs == 1  # scheduled nights one at a time (a backfill's own max_active_runs overrides it)


def test_dates_run_in_order_even_in_a_backfill(dagbag):
    dag = dagbag.dags["partner_drops_nightly"]
    gate = dag.get_task("previous_date_done")
    assert type(gate).__name__ == "PreviousDateDone" and gate.downstream_task_ids == {"discover"} and not gate.upstream_task_ids
    assert gate.pool != WAREHOUSE_POOL  # it waits: holding the warehouse slot would stop the run it waits for


@pytest.mark.parametrize("run_type, previous, waits", [
    ("backfill", "running", True), ("scheduled", "running", True), ("backfill", "failed", False),
    ("backfill", "queued", False), ("backfill", None, False), ("manual", "running", False)])
def test_the_gate_waits_deferred_only_for_a_running_previous_date(run_type, previous, waits):
    from types import SimpleNamespace

    from airflow.sdk import DAG
    from airflow.sdk.exceptions import TaskDeferred

    from partner_pipeline.sequencing import PreviousDateDone

    with DAG("partner_drops_nightly", schedule=None):
        gate = PreviousDateDone(task_id="gate")
    ti = SimpleNamespace(get_previous_dagrun=lambda: previous and SimpleNamespace(state=previous, run_id="before"))
    context = {"ti": ti, "dag_run": SimpleNamespace(run_type=run_type)}
    if not waits:
        assert gate.execute(context) is None
        return
    with pytest.raises(TaskDeferred) as deferred:
        gate.execute(context)
    assert deferred.value.trigger.run_ids == ["before"] and deferred.value.method_name == "execute"


def test_the_run_report_comes_last_after_every_run_without_deciding_its_state(dagbag):
    report = dagbag.dags["partner_drops_nightly"].get_task("report")
    assert report.upstream_task_ids == {"publish_marts"} and not report.downstream_task_ids
    assert report.is_teardown and report.trigger_rule == "all_done_setup_success"  # = all_done: it has no setup task


def test_marts_are_published_after_activation_even_when_a_destination_fails(dagbag):
    dag = dagbag.dags["partner_drops_nightly"]
    assert dag.get_task("activate").upstream_task_ids == {"data_rights"}
    publish = dag.get_task("publish_marts")
    assert publish.upstream_task_ids == {"activate", "share_overlap_reports", "export_seeds"} and publish.trigger_rule == "all_done"
    assert dag.params["full_refresh_activation"] is False and dag.params["full_refresh_models"] is False
    # publish_marts runs even after a failure, so a leaf that needs every task's success gives the run its state
    verdict = dag.get_task("night_succeeded")
    assert verdict.upstream_task_ids == {"activate", "share_overlap_reports", "export_seeds", "publish_marts"}
    assert dag.get_task("export_seeds").upstream_task_ids == {"data_rights"}
    assert verdict.trigger_rule == "all_success"
    assert {t.task_id for t in dag.leaves if not t.is_teardown} == {"night_succeeded"}


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


def test_retries_come_soon_and_back_off(dagbag):
    """Retries are for passing faults (object storage, the warehouse lock): the first within half a minute,
    growing, never more than five minutes apart. Errors no retry fixes fail at once (nightly.task_errors)."""
    from datetime import timedelta

    for task in dagbag.dags["partner_drops_nightly"].tasks:
        assert task.retry_delay <= timedelta(seconds=30) and task.retry_exponential_backoff > 1, task.task_id
        assert task.max_retry_delay is not None and task.max_retry_delay <= timedelta(minutes=5), task.task_id
