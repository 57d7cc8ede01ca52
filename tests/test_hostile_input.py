"""Hostile partner input (issue 14): names that look like SQL, a drop that crashes its ingest,
unreadable files, an unreachable object store. Through discover -> ingest -> publish, the
functions the DAG's tasks call, against the real S3 server and real DuckDB files."""

from __future__ import annotations

import datetime as dt
import errno
import gzip
import hashlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from partner_pipeline import nightly
from partner_pipeline.agreements import load_agreements
from partner_pipeline.settings import load_settings
from partner_pipeline.warehouse import warehouse
from partner_pipeline_dev import synth
from test_ingest import DAY, query, run

pytestmark = pytest.mark.slow

HEADER = ["partner_record_id", "partner_person_id", "email_sha256", "phone_sha256", "consent_enrichment",
          "consent_activation", "consent_ts"]
HOSTILE_HEADER = 'evil"); COPY (SELECT 1 AS x) TO \'marker-header.csv\'; --'


@pytest.fixture
def env(pipeline_env, s3_api, tmp_path):
    settings = load_settings()
    return {"settings": settings, "agreements": load_agreements(settings.agreements_dir), "s3": s3_api, "tmp": tmp_path}


def csv_file(ids: list[str], extra: dict[str, str] | None = None) -> bytes:
    """An RFC 4180 CSV of valid rows; `extra` adds columns (header -> value) the agreement does not name."""
    extra = extra or {}

    def field(text: str) -> str:
        return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text

    lines = [",".join(field(h) for h in [*HEADER, *extra])]
    for rid in ids:
        email = hashlib.sha256(f"{rid}@example.com".encode()).hexdigest()
        lines.append(",".join(field(v) for v in [rid, f"p-{rid}", email, "", "true", "false", "2026-11-20T10:00:00Z",
                                                 *extra.values()]))
    return ("\n".join(lines) + "\n").encode()


def put_drop(env, files: dict[str, tuple[bytes, int]], partner="acme_bank", folder=None) -> None:
    """A hand-made drop: the files (key -> (bytes, data rows)) with a correct manifest, then _SUCCESS."""
    s3, bucket, prefix = env["s3"], env["settings"].landing_bucket, f"{folder or partner}/{DAY}/"
    entries = []
    for key, (body, rows) in files.items():
        s3.put_object(Bucket=bucket, Key=prefix + key, Body=body)
        entries.append({"key": key, "rows": rows, "sha256": hashlib.sha256(body).hexdigest()})
    manifest = {"partner_id": partner, "agreement_id": env["agreements"][partner].agreement_id, "drop_date": str(DAY),
                "schema_version": 1, "files": entries, "record_count": sum(e["rows"] for e in entries)}
    s3.put_object(Bucket=bucket, Key=prefix + "manifest.json", Body=json.dumps(manifest).encode())
    s3.put_object(Bucket=bucket, Key=prefix + "_SUCCESS", Body=b"")


def snapshot(root: Path, skip: set[Path]) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file() and not any(p.is_relative_to(s) for s in skip)}


def warehouse_objects(settings) -> set[tuple[str, str, str]]:
    with warehouse(settings, read_only=True) as con:
        return set(con.execute("""SELECT 'table', schema_name, table_name FROM duckdb_tables() WHERE database_name = 'warehouse'
                                  UNION ALL SELECT 'view', schema_name, view_name FROM duckdb_views()
                                  WHERE database_name = 'warehouse' AND NOT internal""").fetchall())


def parquet_file(ids: list[str]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.table({
        "partner_record_id": ids, "partner_person_id": [f"p-{i}" for i in ids],
        "email_sha256": [hashlib.sha256(f"{i}@example.com".encode()).hexdigest() for i in ids], "phone_sha256": [None] * len(ids),
        "consent_enrichment": [True] * len(ids), "consent_activation": [False] * len(ids),
        "consent_ts": pa.array([dt.datetime(2026, 11, 20, 10, tzinfo=dt.UTC)] * len(ids), pa.timestamp("us", tz="UTC"))}),
        out)
    return out.getvalue()


INJECTION = "a.csv'); COPY (SELECT 1 AS x) TO '{marker}'; --.csv"
EVERY_KIND_OF_NAME = [
    "spaces; semicolons -- and dashes.csv",
    "line\nbreak.csv",
    "naïve-日本語-ü.csv",
    "..records-000.csv",
    ".hidden.csv",
    'sub dir/"double" quotes.csv.gz',
    "x'; DROP TABLE records; --.parquet",
]


# "a.csv" first: the injection's first statement reads it, so on the old code the COPY after it ran
@pytest.mark.parametrize("names", [["a.csv", INJECTION, "records'000.csv"], ["a.csv", INJECTION, "records'000.csv", *EVERY_KIND_OF_NAME]],
                         ids=["injection", "every_kind_of_name"])
def test_hostile_file_and_column_names_load_as_data_and_execute_nothing(env, names):
    tmp, settings = env["tmp"], env["settings"]
    marker = tmp / "marker.csv"
    names = [name.format(marker=marker) if name == INJECTION else name for name in names]
    files, all_ids = {}, set()
    for n, name in enumerate(names):
        ids = [f"r{n}-{i}" for i in range(3)]
        all_ids |= set(ids)
        if name.endswith(".parquet"):
            files[name] = (parquet_file(ids), 3)
        else:
            body = csv_file(ids, {HOSTILE_HEADER: "v1", "second\nline": "v2"})
            files[name] = (gzip.compress(body) if name.endswith(".gz") else body, 3)
    put_drop(env, files)
    put_drop(env, {"a.csv": (csv_file(["z1"]), 1)}, folder="evil'); --")  # a folder name is partner input too
    nightly.publish([], DAY, "baseline")  # the warehouse with nothing of the drop in it
    expected_objects = warehouse_objects(settings)  # partner rows go to raw.partner_records: no table is created
    outside = snapshot(tmp, skip={settings.data_dir})

    outcomes = run()

    outcome = outcomes["acme_bank"]
    assert outcome.status == "staged", outcome.problems
    assert not marker.exists() and not list(tmp.rglob("marker*")) and not Path("marker-header.csv").exists()
    assert outcome.rows_received == outcome.rows_valid == len(all_ids)
    loaded = query(env, "SELECT partner_record_id, source_file FROM raw.partner_records WHERE partner_id = 'acme_bank'")
    assert {r for r, _ in loaded} == all_ids
    assert {f for _, f in loaded} == set(names)  # each row names its file exactly as delivered
    assert list(outcome.dropped_columns) == [HOSTILE_HEADER, "second\nline"]
    [(reasons,)] = query(env, "SELECT reasons FROM audit.drop_events WHERE event = 'loaded'")
    assert {"code": "extra_column", "columns": [HOSTILE_HEADER, "second\nline"],
            "message": "columns not in the agreement were dropped on ingest"} in json.loads(reasons)
    assert outcomes["evil'); --"].problems[0]["code"] == "unknown_partner"
    assert query(env, "SELECT count(*) FROM audit.drop_events WHERE partner_id = ?", ["evil'); --"]) == [(2,)]
    assert warehouse_objects(settings) == expected_objects
    assert snapshot(tmp, skip={settings.data_dir}) == outside
    assert not list(settings.staging_dir.rglob("*.*"))  # no staged file left behind either


def test_a_name_starting_with_two_dots_is_inside_the_folder(env):
    put_drop(env, {"..records-000.csv": (csv_file(["r1", "r2"]), 2)})
    outcome = run()["acme_bank"]
    assert outcome.status == "staged", outcome.problems
    assert query(env, "SELECT count(*), any_value(source_file) FROM raw.partner_records WHERE partner_id = 'acme_bank'") == [(2, "..records-000.csv")]


@pytest.mark.parametrize("key", ["../records-000.csv", "a/../../records-000.csv", "/records-000.csv", "a\\records-000.csv"])
def test_a_name_resolving_outside_the_folder_is_refused(env, key):
    from partner_pipeline.drops import _key_problem

    assert _key_problem(key) == "outside"


class InjectedFault(Exception):
    pass


def test_a_crashing_drop_is_quarantined_alone_and_the_night_goes_on(env, monkeypatch):
    root = env["tmp"] / "synth"
    truths = {}
    for partner in ("acme_bank", "globex_retail"):
        truths[partner] = synth.write_drop(root, env["settings"].landing_bucket,
                                           synth.DropSpec(agreement=env["agreements"][partner], drop_date=DAY, rows=80,
                                                          bad_row_share=0.05), profiles_seed=42, n_profiles=500, seed=3)
    synth.upload_tree(env["s3"], root)
    from partner_pipeline import staging

    load_file = staging._load_file

    def crash_for_acme(con, path, part, f, drop, *args):
        if drop.partner_id == "acme_bank":
            raise InjectedFault(f"cannot handle {path}")
        return load_file(con, path, part, f, drop, *args)

    monkeypatch.setattr(staging, "_load_file", crash_for_acme)
    outcomes = run(run_id="first")

    acme = outcomes["acme_bank"]
    assert acme.status == "quarantined" and [p["code"] for p in acme.problems] == ["internal_error"]
    message = acme.problems[0]["message"]
    assert "InjectedFault: cannot handle acme_bank/2026-11-21/records-000.csv.gz" in message
    assert str(env["settings"].data_dir) not in json.dumps(acme.to_xcom())
    bucket, key = acme.quarantine_report.removeprefix("s3://").split("/", 1)
    assert json.loads(env["s3"].get_object(Bucket=bucket, Key=key)["Body"].read())["problems"] == list(acme.problems)
    [(reasons,)] = query(env, "SELECT reasons FROM audit.drop_events WHERE partner_id = 'acme_bank' AND event = 'quarantined'")
    assert json.loads(reasons) == list(acme.problems)
    assert outcomes["globex_retail"].status == "staged"
    assert query(env, "SELECT count(*) FROM raw.partner_records WHERE partner_id = 'globex_retail'") == [(truths["globex_retail"]["rows_valid"],)]
    assert alerts_for(acme) and "internal_error" in alerts_for(acme)[0]["text"] and "InjectedFault" in alerts_for(acme)[0]["text"]

    monkeypatch.setattr(staging, "_load_file", load_file)  # the bug is fixed: the next run loads the drop
    again = run(run_id="second")
    assert (again["acme_bank"].status, again["globex_retail"].status) == ("staged", "skipped")
    for partner, truth in truths.items():  # the state a clean night leaves
        assert query(env, "SELECT count(*) FROM raw.partner_records WHERE partner_id = ?", [partner]) == [(truth["rows_valid"],)]
        bad = query(env, "SELECT source_file, source_row, failed_rules FROM raw.quarantined_rows WHERE partner_id = ?", [partner])
        assert {(f, r, tuple(rules)) for f, r, rules in bad} == {(b["file"], b["row"], (b["rule"],)) for b in truth["bad_rows"]}
    assert not list(env["settings"].staging_dir.rglob("*.*"))
    assert run(run_id="third")["acme_bank"].status == "skipped"  # and it stays processed


def alerts_for(outcome) -> list[dict]:
    """What the ingest task's on_success_callback posts for this outcome (pulled from XCom as JSON)."""
    from partner_pipeline import alerts

    sent = []
    ti = SimpleNamespace(state="success", task_id="ingest", map_index=0, dag_id="partner_drops_nightly",
                         xcom_pull=lambda task_ids, map_indexes: outcome.to_xcom())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(alerts, "post_alert", lambda message: sent.append(message) or True)
        alerts.DropAlertNotifier().notify({"ti": ti, "run_id": "first"})
    return sent


def test_an_unreachable_object_store_fails_the_task_to_be_retried(env, monkeypatch):
    put_drop(env, {"records.csv": (csv_file(["r1"]), 1)})
    [drop] = nightly.discover(DAY, "run")
    monkeypatch.setenv("PIPELINE_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(Exception) as raised:
        with nightly.task_errors():
            nightly.ingest(drop, "run")
    assert type(raised.value).__name__ == "EndpointConnectionError" and nightly.is_retryable(raised.value)


def test_a_full_disk_fails_the_task_to_be_retried(env, monkeypatch):
    from partner_pipeline import staging

    put_drop(env, {"records.csv": (csv_file(["r1"]), 1)})
    [drop] = nightly.discover(DAY, "run")

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(staging, "download_with_sha256", disk_full)
    with pytest.raises(OSError, match="No space left"):
        nightly.ingest(drop, "run")


def test_errors_no_retry_fixes_fail_the_task_at_once():
    from airflow.sdk.exceptions import AirflowFailException

    from partner_pipeline.agreements import AgreementError
    from partner_pipeline.governance import GovernanceError
    from partner_pipeline.transform import ModelBuildFailed

    for permanent in (AgreementError("acme_bank.yaml: bad"), GovernanceError("policies.yaml: bad"),
                      ModelBuildFailed("dbt build failed: test not_null_x: fail 3")):
        with pytest.raises(AirflowFailException, match="a retry would fail the same way"):
            with nightly.task_errors():
                raise permanent
    for passing in (ModelBuildFailed("IO Error: Could not set lock on file warehouse.duckdb"), ConnectionError("reset")):
        with pytest.raises(type(passing)):
            with nightly.task_errors():
                raise passing


def test_latin1_csv_reason_gives_the_whole_cause_and_the_key(env):
    rows = csv_file([f"r{i}" for i in range(50)]).decode() + "r99,caf\xe9-person,,,true,true,2026-11-20T10:00:00Z\n"
    put_drop(env, {"records.csv": (rows.encode("latin-1"), 51)})
    problem = only_problem(env, "records.csv")
    assert "not utf-8 encoded" in problem["message"].lower() and "UTF-8" in problem["fix"]
    assert "caf" not in problem["message"]  # DuckDB quotes the offending line: personal data stays out of reports


def test_truncated_gzip_reason_gives_the_gzip_error_and_the_key(env):
    body = gzip.compress(csv_file([f"r{i}" for i in range(3000)]))
    put_drop(env, {"records.csv.gz": (body[: len(body) // 2], 3000)})
    problem = only_problem(env, "records.csv.gz")
    assert "Compressed file ended before the end-of-stream marker was reached" in problem["message"]
    assert f'"acme_bank/{DAY}/records.csv.gz"' in problem["message"]  # DuckDB's own line, naming the object
    assert "gzip" in problem["fix"]


def only_problem(env, name: str) -> dict:
    outcome = run()["acme_bank"]
    [problem] = outcome.problems
    assert problem["code"] == "file_unreadable" and problem["file"] == f"acme_bank/{DAY}/{name}"
    assert str(env["settings"].data_dir) not in json.dumps(outcome.problems)
    assert "staging" not in problem["message"] and "/files/" not in problem["message"]
    return problem
