"""make bench-cosmos: the night's dbt step timed two ways on one lake, under a real scheduler.

Builds the demo's lake (its two nights) in a fresh data directory, then starts Airflow 3 standalone
(LocalExecutor, SQLite, the embedded S3 server) on a free loopback port with only dags/probe_dbt.py,
and runs its two DAGs in turn, alternating which goes first: probe_single (the night's transform
task: one `dbt build` subprocess) and probe_watcher (Cosmos ExecutionMode.WATCHER: a producer task
runs `dbt build` once, each model and test is a deferrable sensor task). Writes
bench/results/cosmos-watcher.json with each run's wall time (the DAG run's start to end), its number
of tasks and the dbt task's own duration. Airflow is stopped on the way out, also on failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from partner_pipeline.settings import PROJECT_ROOT, load_settings
from partner_pipeline_dev.local_airflow import admin_password, standalone, standalone_env
from partner_pipeline_dev.local_s3 import free_ports
from partner_pipeline_dev.services import embedded_services

HERE = Path(__file__).resolve().parent
DAY = "2026-11-22"  # the demo's second night


class Api:
    def __init__(self, url: str, password: str):
        self.url, self.token = url, None
        self.token = self.call("POST", "/auth/token", {"username": "admin", "password": password})["access_token"]

    def call(self, method: str, path: str, body: dict | None = None):
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.token}"} if self.token else {})}
        request = urllib.request.Request(f"{self.url}{path}", method=method, headers=headers,
                                         data=json.dumps(body).encode() if body is not None else None)
        for attempt in range(20):
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return json.loads(response.read() or b"null")
            except urllib.error.HTTPError as exc:
                if exc.code not in (404, 503) or attempt == 19:  # 404 until the dag-processor parsed the file
                    raise RuntimeError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None
            except urllib.error.URLError:  # the API server listens a little after the password is written
                if attempt == 19:
                    raise
            time.sleep(3)

    def v2(self, method: str, path: str, body: dict | None = None):
        return self.call(method, f"/api/v2/{path}", body)


def timed_run(api: Api, dag_id: str) -> dict:
    run_id = api.v2("POST", f"dags/{dag_id}/dagRuns", {"logical_date": None})["dag_run_id"]
    while (run := api.v2("GET", f"dags/{dag_id}/dagRuns/{run_id}"))["state"] not in ("success", "failed"):
        time.sleep(2)
    tasks = api.v2("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000")["task_instances"]
    at = lambda s: dt.datetime.fromisoformat(s)  # noqa: E731
    dbt_task = [t for t in tasks if t["task_id"].split(".")[-1] in ("dbt_producer_watcher", "transform")]
    return {"dag": dag_id, "state": run["state"], "wall_seconds": round((at(run["end_date"]) - at(run["start_date"])).total_seconds(), 1),
            "tasks": len(tasks), "dbt_task_seconds": round(sum(t["duration"] or 0 for t in dbt_task), 1),
            "task_states": {s: sum(t["state"] == s for t in tasks) for s in sorted({str(t["state"]) for t in tasks})}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", type=Path, help="a data directory whose demo lake an earlier run built (default: build one)")
    args = parser.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="bench-cosmos-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "AIRFLOW_CONN_"))}
    env |= {"PIPELINE_DATA_DIR": str(data), "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
            "AIRFLOW__COSMOS__CACHE_DIR": str(data / "cosmos")}
    if not args.data:
        print(f"building the demo's lake in {data} ...", flush=True)
        subprocess.run([sys.executable, "-m", "partner_pipeline_dev.demo"], env=env, check=True, stdout=subprocess.DEVNULL)
    os.environ.clear()
    os.environ.update(env)
    settings = load_settings()
    (port,), home = free_ports(1), data / "airflow-cosmos"
    with embedded_services(settings) as services_env:
        run_env = standalone_env(home, port, {**services_env, "AIRFLOW__CORE__DAGS_FOLDER": str(HERE / "dags"), "PROBE_DAY": DAY,
                                              "PROBE_DBT": str(Path(sys.executable).with_name("dbt")),
                                              "PROBE_MANIFEST": str(data / "dbt" / "target" / "manifest.json")})
        with standalone(home, run_env) as server:
            if (password := admin_password(home, server, timeout=240)) is None:
                raise RuntimeError(f"Airflow did not start: see {home / 'standalone.log'}")
            api = Api(f"http://127.0.0.1:{port}", password)
            time.sleep(10)  # the dag-processor's first pass
            if errors := api.v2("GET", "importErrors")["import_errors"]:
                raise RuntimeError(f"dags/probe_dbt.py does not load: {errors[0]['stack_trace'][-2000:]}")
            for dag_id in ("probe_single", "probe_watcher"):
                api.v2("PATCH", f"dags/{dag_id}", {"is_paused": False})
            results = []
            for round_ in range(args.rounds):
                for dag_id in ("probe_single", "probe_watcher")[:: 1 if round_ % 2 == 0 else -1]:
                    results.append(timed_run(api, dag_id) | {"round": round_})
                    print(json.dumps(results[-1]), flush=True)
    out = PROJECT_ROOT / "bench" / "results" / "cosmos-watcher.json"
    out.write_text(json.dumps({"measured_on": dt.date.today().isoformat(), "machine": f"{os.cpu_count()} cores",
                               "runs": results}, indent=1) + "\n")
    print(f"results: {out} (data: {data})")
    return 0 if all(r["state"] == "success" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
