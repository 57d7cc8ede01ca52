"""dbt's unit tests on a warehouse with the schema and no rows (tests/schema_warehouse.py): the fast
tier's run of them, in seconds instead of after a scenario build (test_transform runs them again
on the built warehouse and checks the nightly build leaves them out)."""

from __future__ import annotations

import json

import yaml

from partner_pipeline.transform import DBT_PROJECT, run_dbt
from schema_warehouse import build_schema_warehouse


def test_dbt_unit_tests_pass_on_an_empty_warehouse(tmp_path):
    target = tmp_path / "target"
    result = run_dbt(build_schema_warehouse(tmp_path / "warehouse"), ["test", "--select", "test_type:unit"], target)
    assert result.returncode == 0, result.stdout[-5000:]
    ran = json.loads((target / "run_results.json").read_text())["results"]
    unit_tests = {r["unique_id"]: r["status"] for r in ran if r["unique_id"].startswith("unit_test.")}
    declared = sum(len(yaml.safe_load(path.read_text())["unit_tests"]) for path in DBT_PROJECT.rglob("*unit_tests.yml"))
    assert len(unit_tests) == declared > 10 and set(unit_tests.values()) == {"pass"}
