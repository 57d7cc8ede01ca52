"""The first-party snapshot, the dbt build and the analysts' published copy, on real files."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import subprocess
import sys
import textwrap

import duckdb
import pytest
import yaml

from partner_pipeline import nightly
from partner_pipeline.agreements import load_agreements
from partner_pipeline.first_party import SnapshotError, newest_snapshot
from partner_pipeline.settings import load_settings
from partner_pipeline.sqltext import quote_path
from partner_pipeline.transform import DBT_PROJECT, ModelBuildFailed, build_models, published_marts, run_dbt
from partner_pipeline.governance import load_governance
from partner_pipeline.warehouse import attach_read_only, publish_agreements, publish_governance, warehouse
from partner_pipeline_dev import synth

pytestmark = pytest.mark.slow

DAY = dt.date(2026, 11, 21)


@pytest.fixture
def env(pipeline_env, s3_api, tmp_path):
    settings = load_settings()
    return {"settings": settings, "agreements": load_agreements(settings.agreements_dir), "s3": s3_api, "root": tmp_path / "synth"}


@pytest.fixture
def file_env(pipeline_env, s3_api, tmp_path, monkeypatch):
    """The same, with the warehouse in DuckDB files (PIPELINE_WAREHOUSE=file)."""
    monkeypatch.setenv("PIPELINE_WAREHOUSE", "file")
    settings = load_settings()
    return {"settings": settings, "agreements": load_agreements(settings.agreements_dir), "s3": s3_api, "root": tmp_path / "synth"}


def scenario(env, seed=3, rows=400, profiles=600, ambiguous_share=0.0):
    s = env["settings"]
    truth = synth.generate_scenario(env["root"], landing_bucket=s.landing_bucket, first_party_bucket=s.first_party_bucket,
                                    agreements=env["agreements"], drop_date=DAY, n_profiles=profiles,
                                    rows_per_partner=rows, seed=seed, bad_row_share=0.02, ambiguous_share=ambiguous_share)
    synth.upload_tree(env["s3"], env["root"])
    return truth


def nightly_run(day=DAY, run_id="run"):
    outcomes = [nightly.ingest(d, run_id) for d in nightly.discover(day, run_id)]
    nightly.publish(outcomes, day, run_id)
    nightly.load_first_party(day)
    nightly.transform(day, run_id)
    return nightly.publish_marts(day, run_id)


def test_newest_complete_snapshot_on_or_before_the_date(env):
    s = env["settings"]
    for snapshot, complete in (("2026-11-01", True), ("2026-11-15", True), ("2026-11-20", False), ("2026-11-25", True)):
        env["s3"].put_object(Bucket=s.first_party_bucket, Key=f"profiles/{snapshot}/profiles-000.csv", Body=b"profile_id\n")
        if complete:
            env["s3"].put_object(Bucket=s.first_party_bucket, Key=f"profiles/{snapshot}/_SUCCESS", Body=b"")
    assert newest_snapshot(env["s3"], s.first_party_bucket, DAY) == "2026-11-15"
    assert newest_snapshot(env["s3"], s.first_party_bucket, dt.date(2026, 10, 31)) is None


def test_a_snapshot_without_a_required_column_fails_naming_it_and_loads_nothing(env):
    s = env["settings"]
    scenario(env)
    assert nightly.load_first_party(DAY)["profiles"] == 600
    later = DAY + dt.timedelta(days=1)
    env["s3"].put_object(Bucket=s.first_party_bucket, Key=f"profiles/{later}/profiles-000.csv",
                         Body=b"profile_id,email,country,consent_marketing\np1,a@example.com,GB,true\n")
    env["s3"].put_object(Bucket=s.first_party_bucket, Key=f"profiles/{later}/_SUCCESS", Body=b"")
    with pytest.raises(SnapshotError, match=rf"s3://{s.first_party_bucket}/profiles/{later}/: required column\(s\) phone missing"):
        nightly.load_first_party(later)
    with warehouse(load_settings(), read_only=True) as con:  # the snapshot in force before stays, whole
        assert con.execute("SELECT count(*), any_value(snapshot_date) FROM raw.first_party_profiles").fetchone() == (600, DAY)


def test_no_snapshot_on_or_before_the_date_matches_nothing_and_says_so(env):
    loaded = nightly.load_first_party(DAY)
    assert (loaded["snapshot_date"], loaded["profiles"]) == (None, 0)
    assert "no complete first-party snapshot" in loaded["warning"] and "re-run 2026-11-21" in loaded["warning"]
    scenario(env)
    assert nightly.load_first_party(DAY)["profiles"] == 600
    earlier = nightly.load_first_party(dt.date(2026, 11, 1))  # a backfill before the first snapshot
    assert (earlier["snapshot_date"], earlier["profiles"]) == (None, 0)


def test_an_unchanged_snapshot_is_not_loaded_again(env):
    """A night whose snapshot is the one last loaded (same objects: key, size, ETag) leaves the table as it
    is; a changed object, or a backfill that loaded another snapshot (or none) in between, loads it again."""
    s = env["settings"]
    scenario(env)

    def profiles() -> int:
        with warehouse(load_settings(), read_only=True) as con:
            return con.execute("SELECT count(*) FROM raw.first_party_profiles").fetchone()[0]

    assert {k: nightly.load_first_party(DAY)[k] for k in ("loaded", "profiles")} == {"loaded": True, "profiles": 600}
    with warehouse(load_settings()) as con:  # a row a reload would bring back (what data_rights deletes never comes back)
        con.execute("DELETE FROM raw.first_party_profiles WHERE profile_id = (SELECT min(profile_id) FROM raw.first_party_profiles)")
    later = DAY + dt.timedelta(days=1)
    assert {k: nightly.load_first_party(later)[k] for k in ("loaded", "profiles")} == {"loaded": False, "profiles": 599}
    assert profiles() == 599
    [key] = [o["Key"] for o in env["s3"].list_objects_v2(Bucket=s.first_party_bucket, Prefix=f"profiles/{DAY}/")["Contents"]
             if not o["Key"].endswith("_SUCCESS")]
    body = env["s3"].get_object(Bucket=s.first_party_bucket, Key=key)["Body"].read()
    env["s3"].put_object(Bucket=s.first_party_bucket, Key=key, Body=body)  # the same bytes again: same ETag and size
    assert nightly.load_first_party(later)["loaded"] is False
    rewritten = gzip.compress(gzip.decompress(body), mtime=1) if key.endswith(".gz") else body.rstrip(b"\n") + b"\n\n"
    env["s3"].put_object(Bucket=s.first_party_bucket, Key=key, Body=rewritten)  # the object replaced: a new ETag
    assert {k: nightly.load_first_party(later)[k] for k in ("loaded", "profiles")} == {"loaded": True, "profiles": 600}
    assert nightly.load_first_party(dt.date(2026, 11, 1))["profiles"] == 0  # a backfill before the first snapshot
    assert {k: nightly.load_first_party(later)[k] for k in ("loaded", "profiles")} == {"loaded": True, "profiles": 600}
    with warehouse(load_settings(), read_only=True) as con:
        assert con.execute("SELECT count(*), count(source), sum(profiles) FROM audit.first_party_loads").fetchone() == (4, 3, 1800)


def test_marts_equal_ground_truth_and_hold_no_raw_identifiers(env):
    """Some of each drop's persons share a partner_person_id (ambiguous: linked to nobody, enrich nothing)."""
    truth = scenario(env, ambiguous_share=0.04)
    summary = nightly_run()
    assert {r["partner_id"] for r in summary["match_report"]} == {"acme_bank", "globex_retail"}
    for r in summary["match_report"]:
        expected = truth["drops"][f"{r['partner_id']}/{r['drop_date']}"]
        matches = expected["expected_matches"]
        assert r["rows_valid"] == expected["rows_valid"] and matches["ambiguous"] >= 8
        assert (r["matched_by_email"], r["matched_by_phone"], r["unmatched"], r["ambiguous"]) == (
            matches["by_email"], matches["by_phone"], matches["unmatched"], matches["ambiguous"])
    assert summary["segment_sizes"] == truth["segments"]
    with published_marts(env["settings"]) as con:  # the published marts only (on the lake: its schema marts)
        tables = {t for (t,) in con.execute("""SELECT table_name FROM information_schema.tables
                                               WHERE table_catalog = current_database() AND table_schema = current_schema()""").fetchall()}
        assert {"enriched_profiles", "match_report", "segment_membership", "partner_person_links",
                "profile_partner_attributes", "drop_audit"} <= tables
        text_columns = con.execute("""SELECT table_name, column_name FROM information_schema.columns
                                      WHERE table_catalog = current_database() AND table_schema = current_schema()
                                      AND data_type = 'VARCHAR'""").fetchall()
        values = set()
        for table, column in text_columns:
            values |= {v for (v,) in con.execute(f'SELECT DISTINCT "{column}" FROM "{table}" WHERE "{column}" IS NOT NULL').fetchall()}
        links = con.execute("SELECT count(*), count(DISTINCT partner_id || partner_person_id) FROM partner_person_links").fetchone()
        enriched = dict(con.execute("SELECT partner_id, count(DISTINCT profile_id) FROM profile_partner_attributes GROUP BY 1").fetchall())
    assert enriched == truth["expected_enriched"]
    assert links[0] == links[1] > 0  # a partner person maps to one profile at most
    with warehouse(env["settings"], read_only=True) as con:
        raw = con.execute("SELECT email, phone FROM raw.first_party_profiles").fetchall()
    identifiers = {v for row in raw for v in row if v} | {v.strip().lower() for row in raw for v in row if v}
    assert identifiers and not (identifiers & values), "raw email or phone in the published marts"


ANALYST = textwrap.dedent("""
    import sys, duckdb
    con = duckdb.connect(sys.argv[1], read_only=True)
    query = "SELECT count(*), sum(rows_valid) FROM match_report"
    print(con.execute(query).fetchone(), flush=True)
    sys.stdin.readline()          # hold the file open until the run has finished
    print(con.execute(query).fetchone(), flush=True)
""")


def test_an_analyst_holding_the_published_copy_never_blocks_a_run(file_env):
    """On the file, analysts read a copy (on the lake they attach it: test_lake)."""
    env = file_env
    scenario(env, seed=3)
    nightly_run(run_id="first")
    published = str(env["settings"].published_path)
    analyst = subprocess.Popen([sys.executable, "-c", ANALYST, published], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        before = analyst.stdout.readline().strip()
        # a correction arrives; the whole run completes while the analyst keeps the file open
        synth.write_drop(env["root"], env["settings"].landing_bucket,
                         synth.DropSpec(env["agreements"]["acme_bank"], DAY, rows=150), profiles_seed=3, n_profiles=600, seed=8)
        synth.upload_tree(env["s3"], env["root"])
        nightly_run(run_id="second")
        analyst.stdin.write("\n")
        analyst.stdin.flush()
        during = analyst.stdout.readline().strip()
    finally:
        analyst.stdin.close()
        analyst.wait(timeout=30)
    assert during == before  # the open connection keeps its consistent snapshot
    with duckdb.connect(published, read_only=True) as con:
        after = str(con.execute("SELECT count(*), sum(rows_valid) FROM match_report").fetchone())
    assert after != before  # a new connection sees the new run


def test_segment_reading_a_partner_without_agreement_fails_naming_segment_and_column(env):
    scenario(env)
    (env["settings"].agreements_dir / "acme_bank.yaml").unlink()  # the agreement with Acme Bank ends
    outcomes = [nightly.ingest(d, "run") for d in nightly.discover(DAY, "run")]
    nightly.publish(outcomes, DAY, "run")
    nightly.load_first_party(DAY)
    with pytest.raises(ModelBuildFailed, match="segment high_earning_homeowners reads acme_bank__household_income, which enriched_profiles does not have"):
        nightly.transform(DAY, "run")


def test_rerunning_a_date_after_a_later_one_builds_it_as_of_its_own_date(env):
    truth = scenario(env)
    later = DAY + dt.timedelta(days=1)
    synth.write_drop(env["root"], env["settings"].landing_bucket, synth.DropSpec(env["agreements"]["acme_bank"], later, rows=300),
                     profiles_seed=3, n_profiles=600, seed=9)
    synth.upload_tree(env["s3"], env["root"])
    nightly_run(later, run_id="later")
    summary = nightly_run(DAY, run_id="rerun")  # e.g. a backfill of the earlier date
    assert summary["segment_sizes"] == truth["segments"]
    with published_marts(env["settings"]) as con:
        assert con.execute("SELECT max(drop_date) FROM match_report").fetchone()[0] == DAY
        enriched = dict(con.execute("SELECT partner_id, count(DISTINCT profile_id) FROM profile_partner_attributes GROUP BY 1").fetchall())
    assert enriched == truth["expected_enriched"]


def test_dbt_unit_tests_pass_and_the_nightly_build_leaves_them_out(built, warehouse_copy, tmp_path):
    """The nightly build skips dbt's unit tests (fixed inputs, the same answer every night); here they run."""
    target = tmp_path / "target"
    result = run_dbt(warehouse_copy, ["test", "--select", "test_type:unit"], target)
    assert result.returncode == 0, result.stdout[-5000:]
    ran = json.loads((target / "run_results.json").read_text())["results"]
    unit_tests = {r["unique_id"]: r["status"] for r in ran if r["unique_id"].startswith("unit_test.")}
    declared = sum(len(yaml.safe_load(path.read_text())["unit_tests"]) for path in DBT_PROJECT.rglob("*unit_tests.yml"))
    assert len(unit_tests) == declared > 10 and set(unit_tests.values()) == {"pass"}
    nightly_build = json.loads((built["dbt_target"] / "run_results.json").read_text())["results"]
    assert nightly_build and not [r for r in nightly_build if r["unique_id"].startswith("unit_test.")]


def test_profile_hashes_are_made_again_only_for_what_changed(built, warehouse_copy, tmp_path):
    """int_profile_hashes is incremental: a night hashes the profiles whose email or phone changed and
    deletes the rows of profiles gone from the snapshot; a row nothing changed is left as it was (a
    value planted in one proves it was not made again); a full refresh makes every row again, and
    then the table equals the incremental one but for the planted row."""
    hashes = "SELECT profile_id, hash_profile, default_country_code, email_sha256, phone_sha256 FROM intermediate.int_profile_hashes"
    with warehouse(warehouse_copy) as con:
        settings_used = con.execute("SELECT count(DISTINCT (hash_profile, default_country_code)) FROM intermediate.int_profile_hashes").fetchone()[0]
        changed, gone, untouched = (p for (p,) in con.execute(
            "SELECT profile_id FROM raw.first_party_profiles WHERE email IS NOT NULL ORDER BY profile_id LIMIT 3").fetchall())
        con.execute("UPDATE raw.first_party_profiles SET email = ' Changed.Person@Example.com' WHERE profile_id = ?", [changed])
        con.execute("DELETE FROM raw.first_party_profiles WHERE profile_id = ?", [gone])
        con.execute("UPDATE intermediate.int_profile_hashes SET email_sha256 = 'planted' WHERE profile_id = ?", [untouched])
        profiles = con.execute("SELECT count(*) FROM raw.first_party_profiles").fetchone()[0]
    result = run_dbt(warehouse_copy, ["run", "--select", "int_profile_hashes"], tmp_path / "target", PIPELINE_RUN_DATE=DAY.isoformat())
    assert result.returncode == 0, result.stdout[-5000:]
    with warehouse(warehouse_copy, read_only=True) as con:
        incremental = con.execute(hashes).fetchall()
        assert len(incremental) == profiles * settings_used
        assert {e for p, _, _, e, _ in incremental if p == changed} == {hashlib.sha256(b"changed.person@example.com").hexdigest()}
        assert not [row for row in incremental if row[0] == gone]
        assert {e for p, _, _, e, _ in incremental if p == untouched} == {"planted"}
    build_models(warehouse_copy, DAY, "full-refresh", full_refresh=True)  # as the DAG's param full_refresh_models asks
    with warehouse(warehouse_copy, read_only=True) as con:
        full = con.execute(hashes).fetchall()
    assert len(full) == len(incremental)
    assert {row[0] for row in set(incremental) - set(full)} == {row[0] for row in set(full) - set(incremental)} == {untouched}


def test_a_raw_column_the_agreement_no_longer_declares_is_not_an_attribute_value(built, warehouse_copy, tmp_path):
    """An amended agreement can drop an attribute; its raw column stays (earlier drops hold it) but no
    model may read it: not the enrichment, not the scorecard's fill rate."""
    with warehouse(warehouse_copy) as con:
        before = con.execute("SELECT partner_id, drop_date, attribute_fill_rate FROM marts.partner_scorecard ORDER BY 1, 2").fetchall()
        con.execute("""UPDATE raw.partner_records SET attributes = list_append(attributes, {'attribute': 'dropped_attribute', 'value': 'x'})
                       WHERE partner_id = 'acme_bank'""")
    result = run_dbt(warehouse_copy, ["run", "--select", "stg_pipeline__partner_record_attributes", "partner_scorecard", "profile_partner_attributes"],
                     tmp_path / "target", PIPELINE_RUN_DATE=DAY.isoformat())
    assert result.returncode == 0, result.stdout[-5000:]
    with warehouse(warehouse_copy, read_only=True) as con:
        listed = {a for (a,) in con.execute(
            "SELECT DISTINCT unnest(attribute_values).attribute FROM staging.stg_pipeline__partner_record_attributes WHERE partner_id = 'acme_bank'").fetchall()}
        agreed = {a for (a,) in con.execute("SELECT attribute FROM raw.agreement_attributes WHERE partner_id = 'acme_bank'").fetchall()}
        assert listed and listed <= agreed
        assert not con.execute("SELECT count(*) FROM marts.profile_partner_attributes WHERE attribute = 'dropped_attribute'").fetchone()[0]
        assert con.execute("SELECT partner_id, drop_date, attribute_fill_rate FROM marts.partner_scorecard ORDER BY 1, 2").fetchall() == before


def test_dbt_compiles_and_builds_empty_on_a_fresh_warehouse(pipeline_env, tmp_path):
    """Every table dbt reads is declared with the warehouse (warehouse._SCHEMA), one partner table for all
    partners: `dbt compile` and `dbt build --empty` need no data, only the agreements and governance files."""
    settings = load_settings()
    agreements = load_agreements(settings.agreements_dir)
    with warehouse(settings) as con:
        publish_agreements(con, agreements, settings.outbox_bucket)
        publish_governance(con, load_governance(settings.governance_dir, agreements), settings.activation_bucket)
        assert con.execute("SELECT count(*) FROM raw.partner_records").fetchone()[0] == 0
    for command in (["compile"], ["build", "--empty", "--exclude-resource-type", "unit_test"]):
        result = run_dbt(settings, command, tmp_path / "target", PIPELINE_RUN_DATE=DAY.isoformat())
        assert result.returncode == 0, (command, result.stdout[-5000:])
    with warehouse(settings, read_only=True) as con:
        columns = {c for c, *_ in con.execute("DESCRIBE marts.enriched_profiles").fetchall()}
    assert {f"{p}__{a}" for p, agreement in agreements.items() for a in agreement.attributes} <= columns


def _raw_and_audit(settings) -> dict:
    with warehouse(settings, read_only=True) as con:
        names = con.execute("""SELECT schema_name, table_name FROM duckdb_tables()
                               WHERE database_name = current_database() AND schema_name IN ('raw', 'audit') ORDER BY ALL""").fetchall()
        return {f"{s}.{t}": con.execute(f'SELECT count(*), sum(hash(t)) FROM "{s}"."{t}" AS t').fetchone() for s, t in names}


def test_a_hand_typed_dbt_build_changes_no_raw_or_audit_table(built, warehouse_copy, tmp_path):
    """dbt only reads: a `dbt build` typed by hand, with no run date (retention counted from today) and an erasure
    request pending, deletes and inserts nothing; the data-rights step of the night does that."""
    with warehouse(warehouse_copy) as con:
        profile_id = con.execute("SELECT min(profile_id) FROM raw.first_party_profiles").fetchone()[0]
        con.execute("INSERT INTO raw.erasure_requests VALUES ('ER-HAND', '2026-11-21T09:00:00Z', DATE '2026-11-21', 'by hand', 2, ?, NULL, NULL)",
                    [profile_id])
    before = _raw_and_audit(warehouse_copy)
    result = run_dbt(warehouse_copy, ["build", "--exclude-resource-type", "unit_test"], tmp_path / "target")
    assert result.returncode == 0, result.stdout[-5000:]
    assert _raw_and_audit(warehouse_copy) == before
    with warehouse(warehouse_copy, read_only=True) as con:  # yet the models already leave the person out
        assert con.execute("SELECT count(*) FROM marts.enriched_profiles WHERE profile_id = ?", [profile_id]).fetchone()[0] == 0


def test_a_warehouse_with_a_table_per_partner_is_migrated_once(file_env):
    """A warehouse file from before raw.partner_records: its raw."<partner>__records" tables are copied in,
    attributes as (attribute, value) pairs, and dropped, on the first write."""
    from partner_pipeline.agreements import RECORD_COLUMNS
    from partner_pipeline.warehouse import PROVENANCE_COLUMNS

    settings = file_env["settings"]
    settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute("CREATE SCHEMA raw")
        con.execute('CREATE TABLE raw."acme_bank__records" (' + ", ".join(f"{c} VARCHAR" for c in RECORD_COLUMNS)
                    + ", household_income VARCHAR, homeowner VARCHAR, "
                    + ", ".join(f"{n} {k}" for n, k in PROVENANCE_COLUMNS) + ")")
        con.execute("""INSERT INTO raw."acme_bank__records" BY NAME SELECT 'r' || i AS partner_record_id, 'p' || i AS partner_person_id,
                       'true' AS consent_enrichment, CASE WHEN i = 1 THEN '120000' END AS household_income, 'true' AS homeowner,
                       'acme_bank' AS partner_id, DATE '2026-11-20' AS drop_date, 'file.csv' AS source_file, i AS source_row
                       FROM range(1, 4) AS r(i)""")
    with warehouse(settings) as con:
        assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name LIKE '%\\_\\_records' ESCAPE '\\'").fetchone() == (0,)
        rows = con.execute("""SELECT partner_id, partner_record_id, drop_date, source_row, attributes FROM raw.partner_records
                              ORDER BY partner_record_id""").fetchall()
    assert rows == [
        ("acme_bank", "r1", DAY - dt.timedelta(days=1), 1,
         [{"attribute": "household_income", "value": "120000"}, {"attribute": "homeowner", "value": "true"}]),
        ("acme_bank", "r2", DAY - dt.timedelta(days=1), 2, [{"attribute": "homeowner", "value": "true"}]),
        ("acme_bank", "r3", DAY - dt.timedelta(days=1), 3, [{"attribute": "homeowner", "value": "true"}])]
    with warehouse(settings) as con:  # once: nothing left to migrate
        assert con.execute("SELECT count(*) FROM raw.partner_records").fetchone() == (3,)


def test_matching_streams_the_drop_through_its_hash_tables(built, warehouse_copy):
    """DuckDB estimates the drop at a fraction of its size (retention filter, erasure anti join) and,
    left to choose, built a hash table on every partner record: the 10M night ran out of its 2 GB.
    Planned as the nightly build runs it (the model's hooks, then its compiled SQL), no hash join of
    int_partner_records_matched has the drop's rows on its build side; the two built from the drop hold
    a 64-bit hash of each delivered hash (the indexes' filter: at 50M profiles, indexing every profile's
    hash ran out of the 2 GB)."""
    manifest = json.loads((built["dbt_target"] / "manifest.json").read_text())
    node = manifest["nodes"]["model.partner_pipeline.int_partner_records_matched"]
    catalog = "lake" if warehouse_copy.warehouse_kind == "lake" else "warehouse"
    con = duckdb.connect()
    attach_read_only(con, warehouse_copy, catalog)
    if warehouse_copy.warehouse_kind == "file":
        con.execute(f"attach {quote_path(warehouse_copy.marts_path)} as marts (read_only)")
    con.execute(f"use {catalog}")
    for hook in node["config"]["pre-hook"]:
        con.execute(hook["sql"])
    plan = json.loads(con.execute("explain (format json) " + node["compiled_code"]).fetchall()[0][1])

    def scans_the_drop(operator) -> bool:
        """Whether the drop's rows flow out of this operator (a semi, anti or mark join passes on its probe side's rows only)."""
        if operator["extra_info"].get("Table") in (f"{catalog}.raw.partner_records", "partner_records"):
            return True
        if operator["name"] == "HASH_JOIN" and operator["extra_info"].get("Join Type") in ("SEMI", "ANTI", "MARK"):
            return scans_the_drop(operator["children"][0])
        return any(scans_the_drop(child) for child in operator["children"])

    def filters_by_the_drops_hashes(join) -> bool:
        """The indexes' filter: a semi join on one 64-bit hash of each delivered hash, 8 bytes a row."""
        conditions = join["extra_info"].get("Conditions")
        conditions = [conditions] if isinstance(conditions, str) else conditions
        return join["extra_info"].get("Join Type") == "SEMI" and all(c.startswith("hash(") for c in conditions)

    def hash_joins(operator):
        if operator["name"] == "HASH_JOIN":
            yield operator
        for child in operator["children"]:
            yield from hash_joins(child)

    joins = [join for root in plan for join in hash_joins(root)]
    probing_the_drop = [join for join in joins if scans_the_drop(join["children"][0])]
    building_on_the_drop = [join["extra_info"] for join in joins
                            if scans_the_drop(join["children"][1]) and not filters_by_the_drops_hashes(join)]
    assert probing_the_drop and building_on_the_drop == []
    assert len([join for join in joins if filters_by_the_drops_hashes(join) and scans_the_drop(join["children"][1])]) == 2
