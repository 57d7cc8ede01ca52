"""Data rights have one home and each rule one definition, checked without a warehouse build:
- only data_rights.py deletes what the pipeline holds about people and logs it (audit.data_deletions);
  the other modules delete only their own working files and the rows a reload replaces;
- an identifier is normalized and keyed by the warehouse's macros (warehouse.DATA_RIGHTS_MACROS), which
  the dbt models call and which data_rights.py runs for what it reads outside the warehouse: Python and
  SQL give the same answer on tricky values, and an existing warehouse gets the macros as they are now;
- the CSV scrub decides a batch of records at a time and keeps every other record's text as it was."""

from __future__ import annotations

import ast
import dataclasses
import re

import duckdb
import pytest

from partner_pipeline import data_rights
from partner_pipeline.settings import PROJECT_ROOT, load_settings
from partner_pipeline.warehouse import warehouse

PACKAGE = PROJECT_ROOT / "include" / "partner_pipeline"
MODELS = PROJECT_ROOT / "dbt_project" / "models"

# What modules other than data_rights.py may delete: their own working files, and the rows or tables a
# load replaces with the same delivery's (an idempotent reload), never a data subject's or an expired copy.
OWN_DELETIONS = {
    ("first_party.py", "load_snapshot", "rmtree"),  # the snapshot's work folder
    ("first_party.py", "load_snapshot", "CREATE OR REPLACE TABLE raw.first_party_profiles"),  # the snapshot in force, replaced
    ("ingest.py", "ingest_drop", "rmtree"),  # the drop's work folder
    ("staging.py", "stage_drop", "rmtree"),  # a re-run starts from nothing
    ("staging.py", "stage_drop", "unlink"),  # a downloaded file once staged
    ("transform.py", "build_models", "unlink"),  # the marts file being built, dbt's last results
    ("transform.py", "write_published_copy", "unlink"),  # the copy being built
    ("analysts.py", "export", "unlink"),  # the export being built
    ("warehouse.py", "rewrite_warehouse", "unlink"),  # a stale rewrite and write-ahead log
    ("warehouse.py", "publish_outcome", "rmtree"),  # the drop's stage file, once loaded
    ("warehouse.py", "_load_staged", "DELETE FROM raw.partner_records"),  # a delivery replaces its partner's rows of the date
    ("warehouse.py", "_load_staged", "DELETE FROM raw.quarantined_rows"),
    ("warehouse.py", "publish_agreements", "DELETE FROM raw.agreements"),  # mirrors of the YAML files
    ("warehouse.py", "publish_agreements", "DELETE FROM raw.agreement_attributes"),
    ("warehouse.py", "publish_governance", "DELETE FROM raw.destinations"),
    ("warehouse.py", "publish_governance", "DELETE FROM raw.usage_policies"),
    ("warehouse.py", "rewrite_if_owed", "DELETE FROM audit.rewrite_due"),
    ("warehouse.py", "migrate_partner_tables", "DROP TABLE raw."),  # copied into raw.partner_records first
    ("warehouse.py", "_declare", "DROP SCHEMA IF EXISTS marts"),  # an old layout's schema, which would shadow the marts file
    ("warehouse.py", "_declare", "DELETE FROM audit.declarations"),  # the fingerprint replaced by the new one
    # relations of models since moved, which dbt no longer builds (nor drops)
    ("warehouse.py", "", "DROP TABLE IF EXISTS intermediate.int_erasure_identifiers"),
    ("warehouse.py", "", "DROP TABLE IF EXISTS intermediate.int_data_rights_deletions"),
    ("warehouse.py", "", "DROP VIEW IF EXISTS intermediate.int_access_request_subjects"),
    ("warehouse.py", "", "DROP TABLE IF EXISTS intermediate.int_partner_overlap_counts"),
    ("transform.py", "write_published_copy", "DROP VIEW"),  # the copy's views, which read a warehouse analysts do not open
    ("warehouse.py", "drop_taken_over_history", "DROP TABLE audit.segment_size_history"),  # once the model took its rows over
    # a seed export's own audit row, replaced on a retry of the run, and its working table
    ("seeds.py", "_record", "DELETE FROM audit.seed_exports"),
    ("seeds.py", "_export", "DROP TABLE IF EXISTS seed_export"),
    ("seeds.py", "write_seed_file", "unlink"),  # the plain CSV, once compressed into the seed set's csv.gz
    # what a destination holds (activation's sync state), changed as the destination is told
    ("activation.py", "_apply", "DELETE FROM activation.destination_members"),
    ("activation.py", "HttpAudience.sync", "DELETE FROM activation.destination_members"),
    ("activation.py", "S3FileExport.sync", "DELETE FROM activation.destination_members"),
    # the SQLite lake catalog's write-ahead log, emptied once VACUUM has rewritten the file (no row is
    # deleted: the bytes of rows DuckLake already removed; the physical half of an erasure on the lake)
    ("lake.py", "_rewrite_sqlite_catalog", "TRUNCATE checkpoint"),
}
FILE_CALLS = {"unlink", "rmtree", "rmdir", "remove", "removedirs"}
OBJECT_CALLS = {"delete_object", "delete_objects"}
SQL = re.compile(r"\b(DELETE\s+FROM\s+[a-z_]+\.[a-z_]+|CREATE\s+OR\s+REPLACE\s+TABLE\s+[a-z_]+\.[a-z_]+|TRUNCATE\s+[a-z_.]+|"
                 r"DROP\s+(?:TABLE|VIEW|SCHEMA)(?:\s+IF\s+EXISTS)?(?:\s+[a-z_.]+)?|INSERT\s+INTO\s+audit\.data_deletions)", re.IGNORECASE)


def deletions(path) -> set[tuple[str, str, str]]:
    """(module, enclosing function, what) for each deleting call and each deleting SQL statement in a module."""
    tree = ast.parse(path.read_text())
    found = set()

    def visit(node, scope: tuple[str, ...]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            scope = (*scope, node.name)
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in FILE_CALLS | OBJECT_CALLS:
                found.add((path.name, ".".join(scope), name))
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for statement in SQL.findall(" ".join(node.value.split())):
                found.add((path.name, ".".join(scope), statement))
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    visit(tree, ())
    return found


def test_only_data_rights_deletes_objects_and_logs_deletions():
    """Every deletion of an object (quarantined copies, access exports, delivered files, expired copies)
    and every row of audit.data_deletions is data_rights.py's; retention.py only declares."""
    elsewhere = set().union(*(deletions(path) for path in PACKAGE.glob("*.py") if path.name != "data_rights.py"))
    assert {d for d in elsewhere if d[2] in OBJECT_CALLS or "data_deletions" in d[2]} == set()
    assert {d for d in elsewhere if d[0] == "retention.py"} == set()
    mine = deletions(PACKAGE / "data_rights.py")
    assert {"delete_object", "unlink", "rmdir", "INSERT INTO audit.data_deletions"} <= {what for _, _, what in mine}


def test_other_modules_delete_only_their_own_working_files_and_reloads():
    """A new deletion outside data_rights.py fails here: a data-rights deletion belongs in data_rights.py; a
    module's own working file or an idempotent reload is added to OWN_DELETIONS, with its reason."""
    elsewhere = set().union(*(deletions(path) for path in PACKAGE.glob("*.py") if path.name != "data_rights.py"))
    normalized = {(module, function, re.sub(r"\s+", " ", what)) for module, function, what in elsewhere}
    assert normalized == OWN_DELETIONS


def test_the_check_sees_a_deletion(tmp_path):
    module = tmp_path / "sneaky.py"
    module.write_text('def purge(con, s3, path):\n    path.unlink()\n    s3.delete_object(Bucket="b", Key="k")\n'
                      '    con.execute("""INSERT INTO audit.data_deletions VALUES (1)""")\n'
                      '    con.execute("DELETE FROM raw.partner_records WHERE true")\n'
                      '    con.execute(f"DROP TABLE IF EXISTS raw.{name}")\n')
    assert deletions(module) == {("sneaky.py", "purge", "unlink"), ("sneaky.py", "purge", "delete_object"),
                                 ("sneaky.py", "purge", "INSERT INTO audit.data_deletions"),
                                 ("sneaky.py", "purge", "DELETE FROM raw.partner_records"),
                                 ("sneaky.py", "purge", "DROP TABLE IF EXISTS raw.")}


# --- one normalization ---------------------------------------------------------------------

HASH = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
TRICKY = [None, "", " ", " \t\r\n", HASH, HASH.upper(), f"  {HASH} ", f"\t{HASH.upper()}\r\n", f"{HASH}\n", "P-1", " P-1 ",
          "\tp 1\r\n", "\u00a0P-1\u00a0", "a\x00b ", "İstanbul", "ΣΑΣ", "x\u2003", "x\v", "'; DROP TABLE raw.partner_records; --"]


@pytest.fixture
def warehouse_settings(tmp_path):
    """A warehouse file of its own (the macros are the same on the lake: warehouse._SCHEMA declares both)."""
    return dataclasses.replace(load_settings(), warehouse_kind="file", warehouse_path=tmp_path / "warehouse.duckdb",
                               marts_path=tmp_path / "marts.duckdb")


def test_python_normalizes_and_keys_as_the_warehouse_does(warehouse_settings):
    with warehouse(warehouse_settings) as con:
        in_sql = con.execute("""SELECT audit.normal_hash(v), audit.normal_person_id(v), audit.suppression_key(audit.normal_hash(v)),
                                       audit.suppression_key('acme_bank:' || audit.normal_person_id(v)), audit.suppression_key(v)
                                FROM unnest(?::VARCHAR[]) WITH ORDINALITY AS t(v, n) ORDER BY n""", [TRICKY]).fetchall()
    in_python = [(data_rights.normal_hash(v), data_rights.normal_person_id(v)) for v in TRICKY]
    assert in_python == [row[:2] for row in in_sql]
    rows = [{"email_sha256": v, "phone_sha256": v, "partner_person_id": v, "profile_id": v} for v in TRICKY]
    for row, (normal, person, email_key, person_key, profile_key) in zip(data_rights.keyed(rows, "acme_bank"), in_sql):
        expected = {"email_sha256": email_key, "phone_sha256": email_key, "partner_person": person_key, "profile_id": profile_key}
        assert row == data_rights.Keyed(person, normal, {k: v for k, v in expected.items() if v is not None})
    # the rule itself: a hash lowercased and trimmed of spaces, tabs and line breaks, a person id trimmed, empty absent
    assert [data_rights.normal_hash(v) for v in (f"\t{HASH.upper()}\r\n", " \t\r\n", "", None)] == [HASH, None, None, None]
    assert [data_rights.normal_person_id(v) for v in (" P-1 ", "\u00a0P-1\u00a0", "\r\n")] == ["P-1", "\u00a0P-1\u00a0", None]


def test_a_row_is_keyed_within_its_files_partner(warehouse_settings):
    """A file's partner is its folder's, whatever the row says; a JSON object's is its own partner_id; a
    person id without a partner, and a partner without a person id, is no key."""
    rows = [{"partner_person_id": " P-1", "partner_id": "globex_retail"}, {"partner_person_id": "P-1"}, {"partner_id": "acme_bank"},
            {"partner_person_id": "P-1", "partner_id": ""}, {"profile_id": 42}, {"profile_id": ""}]
    in_file = data_rights.keyed(rows, "acme_bank")
    as_objects = data_rights.keyed(rows, None)
    key = data_rights.suppression_key
    assert [r.keys.get("partner_person") for r in in_file] == [key("acme_bank:P-1"), key("acme_bank:P-1"), None, key("acme_bank:P-1"),
                                                               None, None]
    assert [r.keys.get("partner_person") for r in as_objects] == [key("globex_retail:P-1"), None, None, None, None, None]
    assert [r.keys.get("profile_id") for r in as_objects][4:] == [key("42"), key("")]


def test_rows_are_keyed_in_batches_as_one_by_one(monkeypatch):
    rows = [{"email_sha256": f" {HASH[:-2]}{i:02X} ", "partner_person_id": f"P{i} "} for i in range(7)]
    whole = data_rights.keyed(rows, "acme_bank")
    monkeypatch.setattr(data_rights, "_BATCH", 3)
    assert data_rights.keyed(rows, "acme_bank") == whole
    assert [r.email for r in whole] == [f"{HASH[:-2]}{i:02x}" for i in range(7)]
    assert [r.keys["email_sha256"] for r in whole] == [data_rights.suppression_key(f"{HASH[:-2]}{i:02x}") for i in range(7)]


def test_the_macros_are_defined_once_and_an_existing_warehouse_gets_them(warehouse_settings):
    """The normalization is written once (warehouse.py); the models call the warehouse's macros; a warehouse
    written before (or with another definition) has them replaced on its next write session."""
    blanks = "chr(9) || chr(10) || chr(13)"
    holders = [p.relative_to(PROJECT_ROOT) for p in [*PACKAGE.glob("*.py"), *(PROJECT_ROOT / "dbt_project").rglob("*.sql")]
               if blanks in p.read_text()]
    assert [str(p) for p in holders] == ["include/partner_pipeline/warehouse.py"]
    models = {p.stem: p.read_text() for p in MODELS.rglob("*.sql")}
    assert {name for name, text in models.items() if "audit.normal_hash(" in text} == {
        "stg_pipeline__erasure_request_keys", "stg_pipeline__erased_rows"}
    warehouse_settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(warehouse_settings.warehouse_path)) as con:
        con.execute("CREATE SCHEMA audit; CREATE MACRO audit.normal_hash(value) AS 'stale'")
    with warehouse(warehouse_settings) as con:
        assert con.execute("SELECT audit.normal_hash(' AB '), audit.normal_person_id(' P ')").fetchone() == ("ab", "P")


# --- the CSV scrub -------------------------------------------------------------------------

def test_a_csv_is_decided_a_batch_at_a_time_and_kept_records_keep_their_text(monkeypatch):
    text = ('id,email_sha256,note\r\n1,a,"two\nlines"\r\n\r\n2,B,plain\r\n3,a,"quoted, comma"\r\n'
            '\r\n4,c,"x\r\ny"\r\n5,A,last')
    seen = []

    def drop(rows):
        seen.append(len(rows))
        return [row["email_sha256"].lower() == "a" for row in rows]

    whole = data_rights._filter_csv(text, drop)
    assert whole == (5, [{"id": "1", "email_sha256": "a", "note": "two\nlines"}, {"id": "3", "email_sha256": "a", "note": "quoted, comma"},
                         {"id": "5", "email_sha256": "A", "note": "last"}],
                     'id,email_sha256,note\r\n\r\n2,B,plain\r\n\r\n4,c,"x\r\ny"\r\n')
    monkeypatch.setattr(data_rights, "_BATCH", 2)
    seen.clear()
    assert data_rights._filter_csv(text, drop) == whole
    assert sum(seen) == 5 and max(seen) <= 2
    assert data_rights._filter_csv("", drop) == (0, [], "")
    assert data_rights._filter_csv("id,email_sha256\n", drop) == (0, [], "id,email_sha256\n")
