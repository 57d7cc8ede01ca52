"""The typed contracts: DropOutcome crosses XCom as plain JSON and comes back equal; StageFile lays out the stage file."""

from __future__ import annotations

import json

import duckdb
import pydantic
import pytest

from partner_pipeline.contracts import DropOutcome, StageFile
from partner_pipeline.drops import DropRef
from partner_pipeline.sqltext import quote_path

DROP = DropRef("acme_bank", "2026-11-21", "landing", "acme_bank/2026-11-21/", "0123456789abcdef0123", "2026-11-21T23:00:00+00:00",
               (("manifest.json", 10, "e1"), ("records-000.csv.gz", 100, "e2")))


def test_an_outcome_survives_the_xcom_round_trip():
    outcome = DropOutcome.of_drop(DROP, status="new", run_id="r", processing_key="k").but(
        status="quarantined", rows_received=3, failures_by_rule={"identifier_missing": 1}, dropped_columns=["x"],
        problems=[{"code": "too_many_bad_rows", "file": DROP.prefix, "message": "m", "fix": "f"}])
    data = outcome.to_xcom()
    assert json.loads(json.dumps(data)) == data  # plain JSON: what Airflow stores
    assert data["objects"] == [["manifest.json", 10, "e1"], ["records-000.csv.gz", 100, "e2"]]
    assert DropOutcome.from_xcom(json.loads(json.dumps(data))) == outcome
    assert outcome.drop_ref() == DROP


def test_an_outcome_is_frozen_and_names_every_field():
    outcome = DropOutcome(partner_id="hooli_data", drop_date="2026-11-21", prefix="hooli_data/2026-11-21/",
                          status="incomplete", run_id="r")
    with pytest.raises(pydantic.ValidationError):
        outcome.status = "staged"
    with pytest.raises(pydantic.ValidationError):
        DropOutcome.from_xcom({**outcome.to_xcom(), "rows_loaded": 1})  # a misspelt or unknown key fails loudly
    with pytest.raises(pydantic.ValidationError):
        outcome.but(status="done")
    with pytest.raises(ValueError, match="no complete delivery"):
        outcome.drop_ref()


def test_the_stage_file_reads_its_parts_as_one_table(tmp_path):
    stage = tmp_path / "it's a data dir" / StageFile.FILE_NAME  # a quote in the path: quote_path
    parts = [StageFile.part_path(stage, index) for index in range(2)]
    assert parts == [stage.parent / StageFile.RECORDS / "0000.parquet", stage.parent / StageFile.RECORDS / "0001.parquet"]
    parts[0].parent.mkdir(parents=True)
    con = duckdb.connect(str(stage))
    for index, part in enumerate(parts):
        con.execute(f"COPY (SELECT 'r{index}' AS partner_record_id, CAST(NULL AS VARCHAR) AS tier, 'f{index}' AS {StageFile.SOURCE_FILE}, "
                    f"CAST(1 AS BIGINT) AS {StageFile.SOURCE_ROW}, CAST({index + 1} AS BIGINT) AS {StageFile.ROW}) "
                    f"TO {quote_path(part)} ({StageFile.PART_OPTIONS})")
    con.execute(StageFile.records_view_ddl(parts, quote_path))
    con.execute(StageFile.row_failures_ddl())
    assert [r[0] for r in con.execute(f"DESCRIBE {StageFile.RECORDS}").fetchall()] == [
        "partner_record_id", "tier", StageFile.SOURCE_FILE, StageFile.SOURCE_ROW, StageFile.ROW]
    assert con.execute(f"SELECT * FROM {StageFile.RECORDS} ORDER BY {StageFile.ROW}").fetchall() == [
        ("r0", None, "f0", 1, 1), ("r1", None, "f1", 1, 2)]
    assert [r[0] for r in con.execute(f"DESCRIBE {StageFile.ROW_FAILURES}").fetchall()] == [StageFile.ROW, StageFile.RULE]
