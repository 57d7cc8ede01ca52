"""The issued seeds ingest reads for the rule seed_id_unknown (ingest.copy_issued_seeds), against a real
warehouse file that another process holds: DuckDB lets nobody open it then, not even read-only."""

from __future__ import annotations

import subprocess
import sys
import time

import duckdb
import pytest

from conftest import write_stage
from partner_pipeline import ingest
from partner_pipeline.agreements import RECORD_COLUMNS, load_agreements
from partner_pipeline.contracts import StageFile
from partner_pipeline.ingest import copy_issued_seeds, is_infrastructure_fault
from partner_pipeline.settings import PROJECT_ROOT, load_settings
from partner_pipeline.warehouse import warehouse

ACME = load_agreements(PROJECT_ROOT / "include" / "agreements")["acme_bank"]
HOLD = "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(float(sys.argv[2]))"


@pytest.fixture
def settings(tmp_path, monkeypatch):
    """The warehouse in a DuckDB file (a lake's readers never wait for its writers)."""
    monkeypatch.setenv("PIPELINE_WAREHOUSE", "file")
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "data"))
    settings = load_settings()
    with warehouse(settings) as con:
        con.executemany("INSERT INTO raw.issued_seeds VALUES (?, ?, ?, ?, DATE '2026-11-20', DATE '2026-11-20')", [
            ["acme_bank", ACME.agreement_id, "s-acme", "p1"], ["acme_bank", "acme-2025-01", "s-old-agreement", "p1"],
            ["globex_retail", "globex-2026-03", "s-globex", "p1"]])
    return settings


def stage(tmp_path, seed_id: str | None):
    return write_stage(tmp_path / f"stage-{seed_id}" / StageFile.FILE_NAME, list(RECORD_COLUMNS),
                       [{"partner_record_id": "r1", "seed_id": seed_id}])


def seeds_in(path) -> list[str]:
    with duckdb.connect(str(path), read_only=True) as con:
        return [s for (s,) in con.execute(f"SELECT seed_id FROM {StageFile.ISSUED_SEEDS} ORDER BY 1").fetchall()]


def hold(settings, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(settings.warehouse_path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_only_the_agreements_own_seeds_are_copied(settings, tmp_path):
    path = stage(tmp_path, "s-acme")
    assert copy_issued_seeds(path, ACME, settings) == 1
    assert seeds_in(path) == ["s-acme"]  # neither the old agreement's nor another partner's


def test_a_drop_without_seed_ids_never_opens_the_warehouse(settings, tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "WAREHOUSE_LOCK_WAIT_SECONDS", 0.0)
    holder = hold(settings, 30)
    try:
        path = stage(tmp_path, None)
        assert copy_issued_seeds(path, ACME, settings) == 0 and seeds_in(path) == []
    finally:
        holder.kill()
        holder.wait()


def test_a_held_warehouse_is_waited_for_then_fails_the_task_for_a_retry(settings, tmp_path, monkeypatch):
    path = stage(tmp_path, "s-acme")
    monkeypatch.setattr(ingest, "WAREHOUSE_LOCK_WAIT_SECONDS", 1.0)
    holder = hold(settings, 30)
    try:
        started = time.monotonic()
        with pytest.raises(duckdb.IOException) as raised:
            copy_issued_seeds(path, ACME, settings)
        assert 0.4 <= time.monotonic() - started < 10
        assert "lock" in str(raised.value).lower() and is_infrastructure_fault(raised.value)
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.setattr(ingest, "WAREHOUSE_LOCK_WAIT_SECONDS", 60.0)
    holder = hold(settings, 2)  # lets go after 2 s: the copy waits, then reads
    started = time.monotonic()
    assert copy_issued_seeds(path, ACME, settings) == 1
    assert time.monotonic() - started >= 1.0
    holder.wait()
    assert seeds_in(path) == ["s-acme"]


def test_a_row_carrying_a_seed_is_keyed_by_it_for_erasure_whatever_its_partner():
    """data_rights.keyed (files read outside the warehouse: quarantined copies) keys a seed as the models
    do (stg_pipeline__erased_rows): trimmed, without its partner, since our seeds are unique across agreements."""
    from partner_pipeline import data_rights

    rows = data_rights.keyed([{"seed_id": " s-acme\t", "partner_person_id": "x"}, {"seed_id": "s-acme"}, {"seed_id": ""}], "globex_retail")
    assert rows[0].keys["seed_id"] == rows[1].keys["seed_id"] == data_rights.suppression_key("s-acme")
    assert "seed_id" not in rows[2].keys
    suppressed = {kind: {} for kind in data_rights._KEY_KINDS}
    suppressed["seed_id"][data_rights.suppression_key("s-acme")] = {"erase-1"}
    assert [data_rights._requests_of(r, suppressed) for r in rows] == [{"erase-1"}, {"erase-1"}, set()]
