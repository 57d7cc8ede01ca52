"""A warehouse with the pipeline's schema and no partner data: what `make lint` (sqlfluff's dbt
templater compiles every model, and some models query their inputs while compiling) and the fast
tier's dbt unit tests (they read their inputs' columns) need, in seconds instead of a scenario build.

    python tests/schema_warehouse.py DIR   # writes DIR/warehouse.duckdb and DIR/marts.duckdb

Built as the nightly run builds it, minus the drops: the schema every write session declares
(warehouse._SCHEMA: raw.partner_records, an empty first-party snapshot, the audit tables), the
agreements and governance mirrored into raw, then `dbt run` (on no rows: seconds) so every model exists with its columns. Not `dbt run --empty`:
models that query their inputs while compiling (enriched_profiles reads the agreed attributes
through ref()) would see the empty stand-ins --empty puts in place of ref() and lose their columns.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from partner_pipeline.agreements import load_agreements
from partner_pipeline.governance import load_governance
from partner_pipeline.settings import Settings, load_settings
from partner_pipeline.transform import run_dbt
from partner_pipeline.warehouse import publish_agreements, publish_governance, warehouse


def build_schema_warehouse(directory: Path) -> Settings:
    """Build (or rebuild) DIR/warehouse.duckdb and DIR/marts.duckdb; returns settings naming them."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    warehouse_path, marts_path = directory / "warehouse.duckdb", directory / "marts.duckdb"
    for path in (warehouse_path, marts_path):
        path.unlink(missing_ok=True)
    settings = dataclasses.replace(load_settings(), warehouse_kind="file", warehouse_path=warehouse_path, marts_path=marts_path)
    agreements = load_agreements(settings.agreements_dir)
    with warehouse(settings) as con:
        publish_agreements(con, agreements, settings.outbox_bucket)
        publish_governance(con, load_governance(settings.governance_dir, agreements), settings.activation_bucket)
    result = run_dbt(settings, ["run"], directory / "dbt" / "target")
    if result.returncode != 0:
        raise RuntimeError("dbt run failed on the schema-only warehouse:\n" + result.stdout[-5000:])
    return settings


if __name__ == "__main__":
    built = build_schema_warehouse(Path(sys.argv[1] if len(sys.argv) > 1 else "data/lint"))
    print(built.warehouse_path, built.marts_path, sep="\n")
