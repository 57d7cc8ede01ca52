"""dbt-duckdb plugin for the `lake` target (dbt_project/profiles.yml): attaches the lake on dbt's
connection the way every task does (lake.attach: extensions from their packages, secrets with bound
values, the catalog's options), before dbt-duckdb's own ATTACH IF NOT EXISTS, which then finds it."""

from __future__ import annotations

from dbt.adapters.duckdb.plugins import BasePlugin

from partner_pipeline import lake
from partner_pipeline.settings import load_settings


class Plugin(BasePlugin):
    def configure_connection(self, conn) -> None:
        lake.attach(conn, load_settings())
