"""Every setting a deployment changes, read from the environment (see .env.example).

Defaults are the embedded ones: a local S3 server, a DuckDB file and staging area under ./data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The one-slot Airflow pool of the tasks that must write the warehouse alone (POOLED_TASKS). Here (a light
# module) so the DAG file can use it at parse time.
WAREHOUSE_POOL = "duckdb_warehouse"
# Those tasks, for each place the warehouse can be. A DuckDB file allows one writing process: every task
# that opens it for writing. On the lake, tasks write side by side (DuckLake retries a commit that lost a
# race to a commit it does not conflict with; the embedded catalog's writers take turns, lake.writer_turn),
# except the three sends that run side by side after data_rights: activate may purge the lake
# (warehouse.rewrite_if_owed: files rewritten, snapshots expired, unused files deleted), which must have
# no other writer meanwhile.
POOLED_TASKS = {
    "file": frozenset({"discover", "publish", "load_first_party", "transform", "data_rights", "activate",
                       "share_overlap_reports", "export_seeds", "publish_marts", "report"}),
    "lake": frozenset({"activate", "share_overlap_reports", "export_seeds"}),
}


# partner_drops_nightly's max_active_tasks: how many of a night's tasks (its drops' ingests) run at once;
# the bench ingests its drops as many at a time
NIGHT_MAX_ACTIVE_TASKS = 4


def task_pool(task_id: str) -> str:
    """The DAG task's pool: the one-slot warehouse pool where it must write alone, else Airflow's default."""
    return WAREHOUSE_POOL if task_id in POOLED_TASKS[warehouse_kind()] else "default_pool"


def warehouse_kind() -> str:
    kind = os.environ.get("PIPELINE_WAREHOUSE", "lake")
    if kind not in POOLED_TASKS:
        raise ValueError(f"PIPELINE_WAREHOUSE={kind!r}: set it to 'lake' (DuckLake) or 'file' (one DuckDB file)")
    return kind


@dataclass(frozen=True)
class Settings:
    s3_endpoint_url: str | None
    aws_access_key_id: str | None
    aws_secret_access_key: str | None
    aws_region: str
    landing_bucket: str
    first_party_bucket: str
    quarantine_bucket: str
    outbox_bucket: str
    activation_bucket: str
    reports_bucket: str
    data_dir: Path
    warehouse_path: Path
    marts_path: Path  # the dbt marts, attached to the warehouse as catalog `marts` (see warehouse.warehouse)
    published_path: Path
    agreements_dir: Path
    governance_dir: Path
    expectations_dir: Path
    duckdb_memory_limit: str
    duckdb_threads: int
    # where the warehouse lives: `lake` (the DuckLake below, lake.py) or `file` (one DuckDB file, warehouse_path,
    # which allows one writer process: every writing task in the one-slot pool)
    warehouse_kind: str = "lake"
    # DuckLake (lake.py): a catalog path, or `postgres:<libpq string without password>` (the team's)
    lake_catalog: str = ""
    lake_catalog_password: str | None = field(default=None, repr=False)
    lake_bucket: str = "pipeline-lake"
    lake_data_path: str = "s3://pipeline-lake/"
    lake_snapshot_days: int = 7  # how far back analysts may time travel (never past an erasure)

    @property
    def staging_dir(self) -> Path:
        return self.data_dir / "staging"

    @property
    def validation_dir(self) -> Path:
        return self.data_dir / "validation"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    def duckdb_config(self, temp_directory: Path | None = None) -> dict[str, str]:
        """Bounds for every DuckDB database the pipeline opens (DuckDB's default is 80% of RAM)."""
        config = {"memory_limit": self.duckdb_memory_limit, "threads": str(self.duckdb_threads)}
        if temp_directory is not None:
            config["temp_directory"] = str(temp_directory)
        return config


def load_settings() -> Settings:
    env = os.environ
    data_dir = Path(env.get("PIPELINE_DATA_DIR", PROJECT_ROOT / "data"))
    lake_bucket = env.get("PIPELINE_LAKE_BUCKET", "pipeline-lake")
    return Settings(
        s3_endpoint_url=env.get("PIPELINE_S3_ENDPOINT_URL") or None,
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
        aws_region=env.get("AWS_DEFAULT_REGION", "us-east-1"),
        landing_bucket=env.get("PIPELINE_LANDING_BUCKET", "partner-landing"),
        first_party_bucket=env.get("PIPELINE_FIRST_PARTY_BUCKET", "first-party"),
        quarantine_bucket=env.get("PIPELINE_QUARANTINE_BUCKET", "partner-quarantine"),
        outbox_bucket=env.get("PIPELINE_OUTBOX_BUCKET", "partner-outbox"),
        activation_bucket=env.get("PIPELINE_ACTIVATION_BUCKET", "activation-exports"),
        reports_bucket=env.get("PIPELINE_REPORTS_BUCKET", "pipeline-reports"),
        data_dir=data_dir,
        warehouse_path=Path(env.get("PIPELINE_WAREHOUSE_PATH", data_dir / "warehouse.duckdb")),
        marts_path=Path(env.get("PIPELINE_MARTS_PATH", data_dir / "marts.duckdb")),
        published_path=Path(env.get("PIPELINE_PUBLISHED_PATH", data_dir / "published" / "marts.duckdb")),
        agreements_dir=Path(env.get("PIPELINE_AGREEMENTS_DIR", PROJECT_ROOT / "include" / "agreements")),
        governance_dir=Path(env.get("PIPELINE_GOVERNANCE_DIR", PROJECT_ROOT / "include" / "governance")),
        expectations_dir=Path(env.get("PIPELINE_EXPECTATIONS_DIR", PROJECT_ROOT / "expectations")),
        duckdb_memory_limit=env.get("PIPELINE_DUCKDB_MEMORY_LIMIT", "2GB"),
        duckdb_threads=int(env.get("PIPELINE_DUCKDB_THREADS", "2")),
        warehouse_kind=warehouse_kind(),
        lake_catalog=env.get("PIPELINE_LAKE_CATALOG") or str(data_dir / "lake" / "catalog.sqlite"),
        lake_catalog_password=env.get("PIPELINE_LAKE_CATALOG_PASSWORD") or None,
        lake_bucket=lake_bucket,
        lake_data_path=env.get("PIPELINE_LAKE_DATA_PATH") or f"s3://{lake_bucket}/",
        lake_snapshot_days=int(env.get("PIPELINE_LAKE_SNAPSHOT_DAYS", "7")),
    )
