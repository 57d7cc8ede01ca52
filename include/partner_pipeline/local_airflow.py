"""Airflow on the embedded defaults: SQLite metadata under a project-local AIRFLOW_HOME.

Used by `make demo` and the end-to-end tests to run the nightly DAG in-process
(`airflow dags test`), exactly as a data engineer would from the command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from partner_pipeline.settings import PROJECT_ROOT
from partner_pipeline.warehouse import WAREHOUSE_POOL

DAG_ID = "partner_drops_nightly"


def airflow_env(airflow_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
        "GX_ANALYTICS_ENABLED": "False",
        "NO_COLOR": "1",
    })
    env.update(extra or {})
    return env


def _airflow(args: list[str], env: dict[str, str], check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("airflow")), *args]
    return subprocess.run(command, env=env, check=check, text=True,
                          stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None)


def prepare(airflow_home: Path, env: dict[str, str]) -> None:
    """Create the metadata database and the warehouse pool once per AIRFLOW_HOME."""
    airflow_home.mkdir(parents=True, exist_ok=True)
    marker = airflow_home / ".prepared"
    if marker.exists():
        return
    _airflow(["db", "migrate"], env, capture=True)
    _airflow(["pools", "set", WAREHOUSE_POOL, "1", "DuckDB warehouse: one writer at a time"], env, capture=True)
    marker.touch()


def run_nightly(day: str, airflow_home: Path, extra_env: dict[str, str] | None = None, capture: bool = True) -> subprocess.CompletedProcess:
    """`airflow dags test partner_drops_nightly <day>`: every task in this process, no scheduler needed."""
    env = airflow_env(airflow_home, extra_env)
    prepare(airflow_home, env)
    return _airflow(["dags", "test", DAG_ID, day], env, check=False, capture=capture)
