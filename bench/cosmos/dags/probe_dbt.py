"""make bench-cosmos (bench/cosmos/run.py): the night's dbt step two ways on one lake, timed side by side.

probe_single: today's transform task (one `dbt build` in a subprocess, via nightly.transform).
probe_watcher: Cosmos 1.15 ExecutionMode.WATCHER: a producer runs `dbt build` once (dbtRunner,
in-process), and each model / test is a deferrable sensor task fed by the producer's XComs.
"""
from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import dag, task
from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import ExecutionMode, LoadMode

from partner_pipeline.settings import PROJECT_ROOT

DAY = os.environ["PROBE_DAY"]  # set by run.py, as PROBE_MANIFEST and PROBE_DBT
ENV = {"PIPELINE_RUN_DATE": DAY, "PIPELINE_RETENTION_DATE": DAY, "PIPELINE_RUN_ID": "probe",
       "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False, max_active_tasks=4)
def probe_single():
    @task
    def transform(run_id=None):
        import datetime as dt

        from partner_pipeline import nightly
        return nightly.transform(dt.date.fromisoformat(DAY), run_id)

    transform()


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False, max_active_tasks=4)
def probe_watcher():
    DbtTaskGroup(
        group_id="dbt",
        project_config=ProjectConfig(PROJECT_ROOT / "dbt_project", manifest_path=os.environ["PROBE_MANIFEST"], install_dbt_deps=False,
                                     env_vars=ENV),
        profile_config=ProfileConfig(profile_name="partner_pipeline", target_name="lake",
                                     profiles_yml_filepath=PROJECT_ROOT / "dbt_project" / "profiles.yml"),
        execution_config=ExecutionConfig(execution_mode=ExecutionMode.WATCHER,
                                         dbt_executable_path=str(Path(os.environ["PROBE_DBT"]))),
        render_config=RenderConfig(load_method=LoadMode.DBT_MANIFEST, exclude=["resource_type:unit_test"]),
        operator_args={"install_deps": False, "append_env": True},  # env: ProjectConfig.env_vars
    )


probe_single()
probe_watcher()
