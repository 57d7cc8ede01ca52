"""The DuckLake foundation against the real servers: PostgreSQL as catalog (the team configuration)
or the embedded SQLite-file catalog, Parquet files in the S3 server."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from conftest import ANALYST_KEYS, ANALYST_LAKE_BUCKET, BUILT_DAY, run_night, s3
from partner_pipeline import lake, nightly
from partner_pipeline.agreements import load_agreements
from partner_pipeline.contracts import DropOutcome
from partner_pipeline.settings import load_settings
from partner_pipeline.sqltext import quote_ident, quote_path
from partner_pipeline.storage import ensure_buckets
from partner_pipeline.transform import published_marts
from partner_pipeline.warehouse import warehouse
from partner_pipeline_dev import synth
from partner_pipeline_dev.local_audience_api import AudienceApi
from partner_pipeline_dev.local_postgres import create_database, create_role, postgres_bin_dir

pytestmark = pytest.mark.e2e

_lakes = itertools.count()
EMAIL = "erase-me-7c1f0a@example.com"


@pytest.fixture
def lake_env(pipeline_env, s3_server, postgres_server, tmp_path, monkeypatch) -> dict[str, str]:
    """A fresh lake on the PostgreSQL catalog: its own catalog database and its own bucket (set after
    pipeline_env, which points the pipeline at the embedded catalog)."""
    n = next(_lakes)
    catalog = create_database(postgres_server, f"lake_test_{os.getpid()}_{n}")
    env = {**s3_server.env(), "PIPELINE_DATA_DIR": str(tmp_path / "data"),
           "PIPELINE_LAKE_BUCKET": f"lake-{os.getpid()}-{n}", **catalog.env()}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PIPELINE_LAKE_DATA_PATH", raising=False)
    ensure_buckets(s3(s3_server), [env["PIPELINE_LAKE_BUCKET"]])
    return env


@pytest.fixture
def embedded_lake_env(lake_env, monkeypatch) -> dict[str, str]:
    """The same, on the default embedded catalog (a SQLite file under the data dir)."""
    monkeypatch.delenv("PIPELINE_LAKE_CATALOG")
    monkeypatch.delenv("PIPELINE_LAKE_CATALOG_PASSWORD")
    return {k: v for k, v in lake_env.items() if not k.startswith("PIPELINE_LAKE_CATALOG")}


def attached(read_only: bool = False) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    lake.attach(con, load_settings(), read_only=read_only)
    return con


def bucket_objects(s3_server, bucket: str) -> dict[str, bytes]:
    client = s3(s3_server)
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


# One writer process: attaches the lake itself (its own data dir, nothing shared but the servers).
# Its first commit races the others' for certain: each inserts in an open transaction, and all
# commit only once all four have inserted, so all four start from the same snapshot. Then the
# rest of its commits run free.
WRITER = """
import json, pathlib, sys, time, duckdb
from partner_pipeline import lake
from partner_pipeline.agreements import load_agreements
from partner_pipeline.settings import load_settings
partner, commits, rows, tmp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), pathlib.Path(sys.argv[4])
def step(name, gate):
    print(name, flush=True)
    while not (tmp / gate).exists():
        time.sleep(0.01)
con = duckdb.connect()
lake.attach(con, load_settings())
if len(sys.argv) > 5:
    con.execute(f"SET ducklake_max_retry_count = {int(sys.argv[5])}")
insert = "INSERT INTO lake.partner_rows SELECT ?, ?, i FROM range(?) t(i)"
con.execute("BEGIN")
con.execute(insert, [partner, 0, rows])
step("inserted", "commit")
con.execute("COMMIT")
for c in range(1, commits):
    con.execute(insert, [partner, c, rows])
"""

PARTNERS = ["acme_bank", "globex_retail", "hooli_data", "initech_media"]


def run_writers(tmp_path, commits: int, rows: int, *retries: str) -> list[tuple[int, str]]:
    """The four writers at once; (exit code, stderr) of each."""
    writers = []
    for partner in PARTNERS:
        own_dir = tmp_path / f"writer-{partner}"  # no local directory shared between writers
        own_dir.mkdir()
        writers.append(subprocess.Popen(
            [sys.executable, "-c", WRITER, partner, str(commits), str(rows), str(tmp_path), *retries],
            env={**os.environ, "PIPELINE_DATA_DIR": str(own_dir)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    ready = [w.stdout.readline().strip() for w in writers]
    (tmp_path / "commit").touch()
    results = [w.communicate(timeout=300) for w in writers]
    assert ready == ["inserted"] * 4, [err[-2000:] for _, err in results]
    return [(w.returncode, err) for w, (_, err) in zip(writers, results)]


def create_partner_rows() -> int:
    """The shared table; the snapshot after it."""
    con = attached()
    con.execute("CREATE TABLE lake.partner_rows (partner_id VARCHAR, batch INTEGER, row_number BIGINT)")
    first = con.execute("SELECT max(snapshot_id) FROM lake.snapshots()").fetchone()[0]
    con.close()
    return first


def test_four_processes_append_to_one_table_at_once(lake_env, tmp_path):
    commits, rows = 5, 1000
    first = create_partner_rows()
    outcomes = run_writers(tmp_path, commits, rows)
    assert [code for code, _ in outcomes] == [0] * 4, [err[-2000:] for _, err in outcomes]

    con = attached(read_only=True)
    counts = dict(con.execute("SELECT partner_id, count(DISTINCT (batch, row_number)) FROM lake.partner_rows "
                              "GROUP BY ALL").fetchall())
    assert counts == {partner: commits * rows for partner in PARTNERS}
    assert con.execute("SELECT count(*) FROM lake.partner_rows").fetchone()[0] == len(PARTNERS) * commits * rows
    snapshots = con.execute("SELECT snapshot_id, changes FROM lake.snapshots() WHERE snapshot_id > ? ORDER BY 1",
                            [first]).fetchall()
    assert len(snapshots) == len(PARTNERS) * commits  # one snapshot per commit, none merged or lost
    assert all(list(changes) == ["tables_inserted_into"] for _, changes in snapshots)
    # and each snapshot holds exactly one commit: one partner's batch, whole
    per_snapshot = con.execute("SELECT snapshot_id, list(DISTINCT partner_id || ':' || batch), count(*) "
                               "FROM lake.table_changes('partner_rows', ?, ?) GROUP BY 1 ORDER BY 1",
                               [first + 1, snapshots[-1][0]]).fetchall()
    assert [len(commit) for _, commit, _ in per_snapshot] == [1] * len(snapshots)
    assert {count for *_, count in per_snapshot} == {rows}
    assert sorted(commit[0] for _, commit, _ in per_snapshot) == [f"{p}:{b}" for p in PARTNERS for b in range(commits)]


def test_without_retries_the_racing_commits_fail(lake_env, tmp_path):
    """What the retry setting buys: with none, three of the four racing commits fail."""
    first = create_partner_rows()
    outcomes = run_writers(tmp_path, 1, 100, "0")
    failed = [err for code, err in outcomes if code != 0]
    assert len(failed) == 3 and all("Exceeded the maximum retry count of 0" in err for err in failed)
    con = attached(read_only=True)
    assert con.execute("SELECT count(*) FROM lake.snapshots() WHERE snapshot_id > ?", [first]).fetchone()[0] == 1


def in_another_process(statement: str) -> subprocess.CompletedProcess:
    """statement in a process of its own with the lake attached (read-only for a SELECT); prints the rows."""
    read_only = statement.startswith("SELECT")
    return subprocess.run([sys.executable, "-c", "import duckdb, sys\nfrom partner_pipeline import lake\n"
                           "from partner_pipeline.settings import load_settings\ncon = duckdb.connect()\n"
                           f"lake.attach(con, load_settings(), read_only={read_only})\n"
                           "print(con.execute(sys.argv[1]).fetchall())", statement], capture_output=True, text=True)


def test_readers_attach_the_embedded_catalog_while_a_writer_holds_it(embedded_lake_env):
    """The embedded catalog is a SQLite file: while one process has the lake attached, even inside an
    open transaction, an analyst's process attaches read-only and reads the last commit; another
    writer may commit once the first is idle (writers take turns: the pool)."""
    settings = load_settings()
    assert settings.lake_catalog == str(settings.data_dir / "lake" / "catalog.sqlite")
    con = attached()
    con.execute("CREATE TABLE lake.t AS SELECT 1 AS a")
    con.execute("BEGIN")
    con.execute("INSERT INTO lake.t VALUES (2)")
    reader = in_another_process("SELECT a FROM lake.t ORDER BY a")
    assert (reader.returncode, reader.stdout.strip()) == (0, "[(1,)]"), reader.stderr[-2000:]
    con.execute("COMMIT")
    reader = in_another_process("SELECT a FROM lake.t ORDER BY a")
    assert (reader.returncode, reader.stdout.strip()) == (0, "[(1,), (2,)]"), reader.stderr[-2000:]
    writer = in_another_process("INSERT INTO lake.t VALUES (3)")
    assert writer.returncode == 0, writer.stderr[-2000:]
    assert con.execute("SELECT a FROM lake.t ORDER BY a").fetchall() == [(1,), (2,), (3,)]


def catalog_rows_holding(configuration: str, env: dict[str, str], postgres_server, needle: str) -> list[str]:
    """Where the lake's catalog database still holds needle: PostgreSQL's live rows (pg_dump), or
    any byte of the SQLite catalog's files (the database and its write-ahead log)."""
    if configuration == "postgres":
        database = dict(kv.split("=") for kv in env["PIPELINE_LAKE_CATALOG"].removeprefix("postgres:").split())["dbname"]
        dump = subprocess.run([str(postgres_bin_dir() / "pg_dump"), "--data-only", "-h", postgres_server.host,
                               "-p", str(postgres_server.port), "-U", postgres_server.user, database],
                              env={"PGPASSWORD": postgres_server.password}, check=True, capture_output=True, text=True).stdout
        assert "COPY public.ducklake_file_column_stats" in dump  # the lake's catalog
        return [line for line in dump.splitlines() if needle in line]
    catalog = Path(load_settings().lake_catalog)
    files = [path for path in catalog.parent.iterdir() if path.name.startswith(catalog.name)]
    assert catalog in files
    return [path.name for path in files if needle.encode() in path.read_bytes()]


def write_then_erase(con, *emails: str) -> int:
    """A table over several commits holding emails among other rows; the emails deleted. The last
    snapshot that held them."""
    con.execute("CREATE TABLE lake.people (person_id INTEGER, email VARCHAR)")
    con.execute("INSERT INTO lake.people SELECT i, 'keep-' || i || '@example.com' FROM range(100) t(i)")
    for n, email in enumerate(emails):
        con.execute("INSERT INTO lake.people VALUES (?, ?), (?, 'keep-too@example.com')", [1000 + n, email, 2000 + n])
    con.execute("INSERT INTO lake.people SELECT i, 'later-' || i || '@example.com' FROM range(200, 250) t(i)")
    with_emails = con.execute("SELECT max(snapshot_id) FROM lake.snapshots()").fetchone()[0]
    con.execute("DELETE FROM lake.people WHERE list_contains(?, email)", [list(emails)])
    return with_emails


@pytest.mark.parametrize("configuration", ["postgres", "embedded"])
def test_purge_removes_erased_bytes_from_every_object(configuration, request, s3_server, postgres_server):
    env = request.getfixturevalue("lake_env" if configuration == "postgres" else "embedded_lake_env")
    bucket = env["PIPELINE_LAKE_BUCKET"]
    con = attached()
    with_email = write_then_erase(con, EMAIL)
    assert [k for k, body in bucket_objects(s3_server, bucket).items() if EMAIL.encode() in body]  # a DELETE alone keeps it

    lake.purge_deleted_rows(con)

    objects = bucket_objects(s3_server, bucket)
    assert objects and not [key for key, body in objects.items() if EMAIL.encode() in body]
    assert con.execute("SELECT count(*) FROM lake.people").fetchone()[0] == 151
    try:
        old = con.execute(f"SELECT email FROM lake.people AT (VERSION => {int(with_email)})").fetchall()
    except duckdb.Error as exc:
        assert "snapshot" in str(exc).lower()
    else:
        assert (EMAIL,) not in old
    # nor the catalog database (its column statistics hold min and max values)
    assert catalog_rows_holding(configuration, env, postgres_server, EMAIL) == []


@pytest.mark.parametrize("configuration", ["postgres", "embedded"])
@pytest.mark.parametrize("alone", [True, False], ids=["alone-in-its-file", "beside-other-rows"])
def test_purge_leaves_no_erased_value_in_the_table_statistics(configuration, alone, request, s3_server, postgres_server):
    """DuckLake 1.5.5 keeps a deleted row's values as its table's column bounds (min and max, nested
    values included): purging resets them to the remaining rows' bounds."""
    env = request.getfixturevalue("lake_env" if configuration == "postgres" else "embedded_lake_env")
    con = attached()
    low = "aaa-" + EMAIL  # below every other email: the table's min value
    high = "zzz-" + EMAIL  # above every other attribute value: the max of the list's elements
    con.execute("CREATE TABLE lake.people (person_id INTEGER, email VARCHAR, attributes VARCHAR[])")
    con.execute("INSERT INTO lake.people SELECT i, 'keep-' || i || '@example.com', ['plan-' || i] FROM range(100) t(i)")
    if alone:  # its own commit, so its own data file: the DELETE drops the file and writes no delete file
        con.execute("INSERT INTO lake.people VALUES (100000, ?, [?])", [low, high])
    else:  # a file shared with a row that stays: the DELETE writes a delete file
        con.execute("INSERT INTO lake.people VALUES (100000, ?, [?]), (101, 'keep-101@example.com', ['plan-101'])",
                    [low, high])
    con.execute("DELETE FROM lake.people WHERE email = ?", [low])
    assert catalog_rows_holding(configuration, env, postgres_server, low)  # a DELETE alone keeps the bound

    lake.purge_deleted_rows(con)

    assert not [k for k, body in bucket_objects(s3_server, env["PIPELINE_LAKE_BUCKET"]).items()
                if low.encode() in body or high.encode() in body]
    assert catalog_rows_holding(configuration, env, postgres_server, low) == []
    assert catalog_rows_holding(configuration, env, postgres_server, high) == []
    assert con.execute("SELECT count(*), min(person_id), max(person_id), min(email), max(email), "
                       "max(attributes[1]) FROM lake.people").fetchone() == (
        (100, 0, 99) if alone else (101, 0, 101)) + ("keep-0@example.com", "keep-9@example.com", "plan-99")


def test_the_catalog_password_never_reaches_sql_text_or_errors(lake_env, monkeypatch):
    con = attached()
    secrets = " ".join(row[0] for row in con.execute("SELECT secret_string FROM duckdb_secrets()").fetchall())
    assert lake_env["PIPELINE_LAKE_CATALOG_PASSWORD"] not in secrets
    assert lake_env["AWS_SECRET_ACCESS_KEY"] not in secrets
    con.close()

    wrong = "wrong-" + lake_env["PIPELINE_LAKE_CATALOG_PASSWORD"]
    monkeypatch.setenv("PIPELINE_LAKE_CATALOG_PASSWORD", wrong)
    with pytest.raises(duckdb.Error) as refused:
        attached()
    assert "password authentication failed" in str(refused.value) and wrong not in str(refused.value)

    for catalog in (lake_env["PIPELINE_LAKE_CATALOG"] + f" password={wrong}", f"postgres:postgresql://lake:{wrong}@127.0.0.1/x"):
        monkeypatch.setenv("PIPELINE_LAKE_CATALOG", catalog)
        with pytest.raises(ValueError, match="PIPELINE_LAKE_CATALOG_PASSWORD") as rejected:
            attached()
        assert wrong not in str(rejected.value)


@pytest.mark.parametrize("configuration", ["embedded", "postgres"])
def test_a_night_on_the_lake_publishes_what_a_night_on_the_file_does(configuration, request, pipeline_env, governance_dir,
                                                                      s3_api, tmp_path, monkeypatch):
    """The whole night (every task function in the DAG's order: ingest, dbt build with target `lake`,
    data rights, activation, seed export, publishing) with the warehouse in the lake publishes the
    same analysts' copy, row for row (EXCEPT ALL, both ways), as the same night on the DuckDB file,
    but for when it ran. Each night has its own data dir and a fresh audience API."""
    settings = load_settings()
    synth.generate_scenario(tmp_path / "synth", landing_bucket=settings.landing_bucket,
                            first_party_bucket=settings.first_party_bucket, agreements=load_agreements(settings.agreements_dir),
                            drop_date=BUILT_DAY, n_profiles=1500, rows_per_partner=1200, seed=7, bad_row_share=0.02)
    synth.upload_tree(s3_api, tmp_path / "synth")
    for kind in ("file", "lake"):
        monkeypatch.setenv("PIPELINE_WAREHOUSE", kind)
        if kind == "lake":
            request.getfixturevalue("lake_env" if configuration == "postgres" else "embedded_lake_env")
        monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / kind))
        with AudienceApi(token="test-token", hash_profile="uid2") as api:
            monkeypatch.setenv("AIRFLOW_CONN_PERSONALIZATION_API",
                               json.dumps({"conn_type": "http", "host": api.url, "password": api.token}))
            run_night(BUILT_DAY, "night")
    settings = load_settings()
    assert not (tmp_path / "lake" / "warehouse.duckdb").exists() and not (tmp_path / "lake" / "published").exists()
    keys = list(bucket_objects(request.getfixturevalue("s3_server"), settings.lake_bucket))
    assert [k for k in keys if k.startswith("marts/enriched_profiles") and k.endswith(".parquet")]

    with published_marts(settings) as compare:  # the lake at the published snapshot, schema marts in use
        compare.execute(f"ATTACH {quote_path(tmp_path / 'file' / 'published' / 'marts.duckdb')} AS file (READ_ONLY)")
        tables = {kind: compare.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = ? "
                                        "UNION ALL SELECT view_name FROM duckdb_views() WHERE database_name = ? AND schema_name = ? "
                                        "ORDER BY 1", [kind, schema] * 2).fetchall()
                  for kind, schema in (("file", "main"), ("lake", "marts"))}
        assert tables["lake"] == tables["file"] and len(tables["file"]) >= 17
        rows = 0
        for (table,) in tables["file"]:
            # when it ran: timestamps, and the hours from delivery to load
            columns = ", ".join(quote_ident(c) for (c,) in compare.execute(
                """SELECT column_name FROM duckdb_columns() WHERE database_name = 'file' AND table_name = ?
                   AND data_type NOT LIKE 'TIMESTAMP%' AND column_name <> 'delivery_lag_hours' ORDER BY column_index""",
                [table]).fetchall())
            on_file = f"SELECT {columns} FROM file.main.{quote_ident(table)}"
            on_lake = f"SELECT {columns} FROM lake.marts.{quote_ident(table)}"
            assert compare.execute(f"SELECT count(*) FROM ({on_file} EXCEPT ALL {on_lake})").fetchone()[0] == 0, table
            assert compare.execute(f"SELECT count(*) FROM ({on_lake} EXCEPT ALL {on_file})").fetchone()[0] == 0, table
            rows += compare.execute(f"SELECT count(*) FROM file.main.{quote_ident(table)}").fetchone()[0]
    assert rows > 5000


def test_an_analyst_reads_the_last_published_night_while_the_next_one_runs(pipeline_env, embedded_lake_env, governance_dir,
                                                                             audience_api, s3_api, tmp_path, monkeypatch):
    """An analyst connected to the published marts (the lake at the last published snapshot) sees the
    same rows after every task of the next night, as does one connecting meanwhile; once that night
    is published, a new connection sees it, while the one left open still sees its own night."""
    monkeypatch.setenv("PIPELINE_WAREHOUSE", "lake")
    settings = load_settings()
    day = BUILT_DAY
    agreements = load_agreements(settings.agreements_dir)
    synth.generate_scenario(tmp_path / "synth", landing_bucket=settings.landing_bucket, first_party_bucket=settings.first_party_bucket,
                            agreements=agreements, drop_date=day - dt.timedelta(days=1), n_profiles=800, rows_per_partner=600,
                            seed=21, bad_row_share=0.02)
    for partner_id in ("acme_bank", "globex_retail"):
        synth.write_drop(tmp_path / "synth", settings.landing_bucket, synth.DropSpec(agreements[partner_id], day, rows=500,
                                                                                     bad_row_share=0.02), 21, 800, 22)
    synth.upload_tree(s3_api, tmp_path / "synth")
    run_night(day - dt.timedelta(days=1), "n1")

    def marts(con) -> dict[str, list[tuple]]:
        return {table: con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
                for table in ("match_report", "drop_states", "segments", "partner_scorecard", "activation_log", "activation_syncs")}

    with published_marts(settings) as analyst:
        first = marts(analyst)
        assert {r[1] for r in first["match_report"]} == {day - dt.timedelta(days=1)} and first["activation_log"]
        outcomes = [nightly.ingest(d, "n2") for d in nightly.discover(day, "n2")]
        for task in (lambda: nightly.publish(outcomes, day, "n2"), lambda: nightly.load_first_party(day),
                     lambda: nightly.transform(day, "n2"), lambda: nightly.data_rights(day, "n2"),
                     lambda: nightly.activate(day, "n2"), lambda: nightly.share_overlap_reports(day, "n2"),
                     lambda: nightly.export_seeds(day, "n2")):
            task()
            assert marts(analyst) == first
            with published_marts(settings) as newcomer:
                assert marts(newcomer) == first
        nightly.publish_marts(day, "n2")
        assert marts(analyst) == first
        with published_marts(settings) as newcomer:
            second = marts(newcomer)
    assert {r[1] for r in second["match_report"]} == {day - dt.timedelta(days=1), day}
    assert len(second["activation_log"]) > len(first["activation_log"])

    # the analysts' CLI: the last night, or an earlier one still kept
    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "partner_pipeline.analysts", *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    count = "COPY (SELECT count(*) FROM match_report) TO '/dev/stdout' (FORMAT csv, HEADER false)"
    assert cli("-c", count).split() == [str(len(second["match_report"]))]
    assert cli("--night", str(day - dt.timedelta(days=1)), "-c", count).split() == [str(len(first["match_report"]))]
    refused = subprocess.run([sys.executable, "-m", "partner_pipeline.analysts", "--night", "2020-01-01", "-c", count],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "never published" in refused.stderr
    # a copy for a laptop without access to the lake: the same rows, in one DuckDB file
    cli("--export", str(tmp_path / "copy.duckdb"), "--night", str(day - dt.timedelta(days=1)))
    with duckdb.connect(str(tmp_path / "copy.duckdb"), read_only=True) as copy:
        assert marts(copy) == first


def test_an_analysts_role_and_keys_read_the_published_marts_and_no_raw_value(lake_env, pipeline_env, governance_dir, audience_api,
                                                                            s3_api, tmp_path, monkeypatch, postgres_server):
    """The team configuration: the lake made and the analysts' role granted by `python -m partner_pipeline.warehouse
    init --analyst-role`, the analysts' S3 keys reading only lake.analyst_prefixes. With them the analysts'
    CLI reads the published marts; a raw table's files are refused, the catalog shows no raw table's
    statistics (its smallest and largest emails), and nothing can be written."""
    monkeypatch.setenv("PIPELINE_LAKE_BUCKET", ANALYST_LAKE_BUCKET)
    ensure_buckets(s3_api, [ANALYST_LAKE_BUCKET])
    settings = load_settings()
    synth.generate_scenario(tmp_path / "synth", landing_bucket=settings.landing_bucket, first_party_bucket=settings.first_party_bucket,
                            agreements=load_agreements(settings.agreements_dir), drop_date=BUILT_DAY, n_profiles=600,
                            rows_per_partner=500, seed=31, bad_row_share=0.02)
    synth.upload_tree(s3_api, tmp_path / "synth")
    run_night(BUILT_DAY, "night")
    role = f"analyst_{os.getpid()}_{next(_lakes)}"
    init = subprocess.run([sys.executable, "-m", "partner_pipeline.warehouse", "init", "--analyst-role", role], capture_output=True, text=True)
    assert init.returncode != 0 and "does not exist" in init.stderr  # the role is the deployment's to create
    database = dict(part.split("=") for part in settings.lake_catalog.removeprefix("postgres:").split())["dbname"]
    analyst = create_role(postgres_server, role, "analyst-password-0123", database)
    init = subprocess.run([sys.executable, "-m", "partner_pipeline.warehouse", "init", "--analyst-role", role], capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    as_analyst = {**os.environ, **analyst.env(), **ANALYST_KEYS}

    def cli(sql: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "partner_pipeline.analysts", "-c", sql], capture_output=True, text=True, env=as_analyst)

    with published_marts(settings) as con:
        expected = [con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("segment_membership", "activation_log")]
        emails = {e for (e,) in con.execute("SELECT email FROM lake.raw.first_party_profiles").fetchall()}
    assert min(expected) > 0 and emails
    read = cli("COPY (SELECT (SELECT count(*) FROM segment_membership), (SELECT count(*) FROM activation_log)) "
               "TO '/dev/stdout' (FORMAT csv, HEADER false)")
    assert read.returncode == 0, read.stderr
    assert read.stdout.split() == [",".join(map(str, expected))]
    refused = cli("SELECT email FROM lake.raw.first_party_profiles LIMIT 1")
    assert refused.returncode != 0 and "403" in refused.stdout + refused.stderr

    def statistics(server) -> set[str]:
        """Every value in the catalog's column statistics that this role can read."""
        with duckdb.connect() as con:
            lake.load_lake_extensions(con)
            con.execute("CREATE SECRET (TYPE postgres, HOST ?, PORT ?, DATABASE ?, USER ?, PASSWORD ?)",
                        [server.host, server.port, database, server.user, server.password])
            con.execute("ATTACH '' AS catalog (TYPE postgres, READ_ONLY)")
            return {v for table in ("ducklake_table_column_stats", "ducklake_file_column_stats")
                    for row in con.execute(f"SELECT min_value, max_value FROM catalog.public.{table}").fetchall() for v in row}
    assert statistics(postgres_server) & emails  # the owner's catalog holds raw emails as bounds: the check can see them
    assert not statistics(analyst) & emails
    with duckdb.connect() as con, pytest.MonkeyPatch.context() as mp:
        for key, value in {**analyst.env(), **ANALYST_KEYS}.items():
            mp.setenv(key, value)
        lake.attach(con, load_settings())
        with pytest.raises(duckdb.Error, match="(?i)permission denied|403|access denied"):
            con.execute("INSERT INTO lake.audit.publications VALUES ('forged', DATE '2026-01-01', 1, now())")


def test_old_snapshots_expire_and_a_killed_writers_files_are_deleted(embedded_lake_env, s3_server):
    """Snapshots within the kept days stay (time travel); older ones expire with the files only they used.
    A writer killed before its commit leaves Parquet files no snapshot has: they are deleted, the lake's
    rows untouched."""
    bucket = embedded_lake_env["PIPELINE_LAKE_BUCKET"]
    con = attached()
    con.execute("CREATE TABLE lake.kept (i INTEGER)")
    for n in range(3):
        con.execute("INSERT INTO lake.kept SELECT range FROM range(?, ? + 1000)", [n * 1000, n * 1000])
    con.execute("DELETE FROM lake.kept WHERE i < 1000")
    killed = subprocess.Popen([sys.executable, "-c", """
import os, signal, duckdb
from partner_pipeline import lake
from partner_pipeline.settings import load_settings
con = duckdb.connect()
lake.attach(con, load_settings())
con.execute("BEGIN")
con.execute("INSERT INTO lake.kept SELECT range FROM range(10000000, 13000000)")
print("written", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""], stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline().strip() == "written" and killed.wait() == -9
    parquet = lambda: {k for k in bucket_objects(s3_server, bucket) if k.endswith(".parquet")}  # noqa: E731
    known = {p for (p,) in con.execute("SELECT data_file FROM ducklake_list_files('lake', 'kept')").fetchall()}
    orphans = {k for k in parquet() if not any(p.endswith(k) for p in known)}
    assert orphans, "the killed writer's insert wrote files before its commit"
    snapshots = con.execute("SELECT count(*) FROM lake.snapshots()").fetchone()[0]

    lake.keep_recent_snapshots(con, days=7)  # everything is younger than a week and than a day
    assert con.execute("SELECT count(*) FROM lake.snapshots()").fetchone()[0] == snapshots
    assert orphans <= parquet()
    lake.keep_recent_snapshots(con, days=0, orphan_age=dt.timedelta(0))
    assert con.execute("SELECT count(*) FROM lake.snapshots()").fetchone()[0] == 1
    assert not orphans & parquet()
    assert con.execute("SELECT count(*), min(i), max(i) FROM lake.kept").fetchone() == (2000, 1000, 2999)


def published_rows(settings, columns_of=None) -> dict[str, list[tuple]]:
    """Every published mart's rows (timestamps and the delivery-to-load hours left out: when it ran)."""
    with published_marts(settings) as con:
        tables = [t for (t,) in con.execute("""SELECT table_name FROM duckdb_tables() WHERE schema_name = 'marts'
                                               UNION SELECT view_name FROM duckdb_views() WHERE schema_name = 'marts'
                                               ORDER BY 1""").fetchall()]
        found = {}
        for table in tables:
            columns = ", ".join(quote_ident(c) for (c,) in con.execute(
                """SELECT column_name FROM duckdb_columns() WHERE schema_name = 'marts' AND table_name = ?
                   AND data_type NOT LIKE 'TIMESTAMP%' AND column_name <> 'delivery_lag_hours' ORDER BY column_index""",
                [table]).fetchall())
            found[table] = con.execute(f"SELECT {columns} FROM {quote_ident(table)} ORDER BY ALL").fetchall()
    return found


# The night of run_night in a process of its own. With a file name as 4th argument, publishing holds
# (until killed) once it has recorded the night, as it expires old snapshots and deletes their files.
NIGHT = """
import datetime, pathlib, sys, time
from conftest import run_night
from partner_pipeline import lake
if len(sys.argv) > 4:
    def hold(*args, **kwargs):
        pathlib.Path(sys.argv[4]).touch()
        time.sleep(600)
    lake.keep_recent_snapshots = hold
run_night(datetime.date.fromisoformat(sys.argv[1]), sys.argv[2], sys.argv[3])
"""


def test_a_night_killed_during_its_build_or_its_publishing_and_run_again_publishes_what_a_clean_night_does(
        pipeline_env, governance_dir, s3_api, tmp_path, monkeypatch, request):
    """The night runs in a process of its own, SIGKILLed (with dbt, its child) once dbt has built some
    tables, or while publishing; the night goes on from the killed task, as Airflow retries it. Killed
    in the build, nothing was published; killed while publishing, analysts see the whole new night
    (the publication is one commit) or none of it. The marts the re-run publishes equal, row for row,
    those of a clean night on a lake of its own, and the killed writer's lock is free again."""
    settings = load_settings()
    synth.generate_scenario(tmp_path / "synth", landing_bucket=settings.landing_bucket,
                            first_party_bucket=settings.first_party_bucket, agreements=load_agreements(settings.agreements_dir),
                            drop_date=BUILT_DAY, n_profiles=1500, rows_per_partner=1200, seed=9, bad_row_share=0.02)
    synth.upload_tree(s3_api, tmp_path / "synth")
    night = ["-c", NIGHT, BUILT_DAY.isoformat(), "night"]
    published = {}
    for kind in ("clean", "transform", "publish_marts"):  # killed in that task
        monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / kind))
        monkeypatch.setenv("PIPELINE_LAKE_BUCKET", f"lake-{os.getpid()}-{next(_lakes)}")
        with AudienceApi(token="test-token", hash_profile="uid2") as api:
            monkeypatch.setenv("AIRFLOW_CONN_PERSONALIZATION_API",
                               json.dumps({"conn_type": "http", "host": api.url, "password": api.token}))
            if kind != "clean":
                holding = tmp_path / f"{kind}.publishing"
                proc = subprocess.Popen([sys.executable, *night, "discover", str(holding)], cwd=Path(__file__).parent,
                                        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                dbt_log = tmp_path / kind / "dbt" / "logs" / "dbt.log"
                try:
                    deadline = time.monotonic() + 300
                    while not (holding.exists() if kind == "publish_marts" else
                               dbt_log.exists() and "OK created sql table model intermediate." in dbt_log.read_text()):
                        assert proc.poll() is None and time.monotonic() < deadline, f"the night ended before it was killed in {kind}"
                        time.sleep(0.2)
                finally:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                with published_marts(load_settings()) as con:
                    if kind == "transform":
                        assert con is None  # nothing published: the killed night never reached it
                if kind == "publish_marts":  # the night recorded (one commit), old snapshots not yet expired
                    assert published_rows(load_settings()) == published["clean"]
            # Airflow retries the killed task, then runs the rest
            done = subprocess.run([sys.executable, *night, "discover" if kind == "clean" else kind],
                                  cwd=Path(__file__).parent, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-5000:]
        published[kind] = published_rows(load_settings())
    assert len(published["clean"]) >= 17 and sum(map(len, published["clean"].values())) > 5000
    for kind in ("transform", "publish_marts"):
        assert published[kind].keys() == published["clean"].keys()
        for table, rows in published["clean"].items():
            assert published[kind][table] == rows, (kind, table)


# One drop's ingest task in a process of its own. Its commit waits, inside the transaction, until every
# writer has loaded its rows (a gate of files), so the four commits race for certain.
INGEST = """
import json, pathlib, sys, time
from partner_pipeline import nightly, warehouse
from partner_pipeline.contracts import DropOutcome
gate, writers = pathlib.Path(sys.argv[3]), int(sys.argv[4])
load = warehouse._load_staged
def load_then_wait(con, outcome, agreement):
    load(con, outcome, agreement)
    (gate / outcome.partner_id).touch()
    deadline = time.monotonic() + 120
    while len(list(gate.iterdir())) < writers and time.monotonic() < deadline:
        time.sleep(0.02)
warehouse._load_staged = load_then_wait
outcome = nightly.ingest(DropOutcome.from_xcom(json.loads(sys.argv[1])), sys.argv[2])
print(json.dumps(outcome.to_xcom()))
"""


@pytest.mark.parametrize("configuration", ["postgres", "embedded"])
def test_four_drops_ingested_at_once_by_four_processes_all_land(configuration, request, pipeline_env, agreements_dir, s3_api,
                                                                tmp_path, monkeypatch):
    """Four partners' drops, each ingested by a process of its own (its own data dir: nothing shared but
    the S3 server and the catalog), all at once, each committing its rows to the lake; then each partner
    re-delivers and the four replace their rows at once (a DELETE and an INSERT per drop, which conflict
    in DuckLake: the commit is run again). On the PostgreSQL catalog the four commits are held until all
    four have loaded, so they race for certain; on the embedded one the writers take turns on its lock
    file (no hold: the turn is held through the commit). Every drop lands, none is lost or doubled."""
    from partner_pipeline import codegen

    request.getfixturevalue("lake_env" if configuration == "postgres" else "embedded_lake_env")
    template = (agreements_dir / "globex_retail.yaml").read_text()
    for partner_id in ("globex_two", "globex_three"):
        (agreements_dir / f"{partner_id}.yaml").write_text(
            template.replace("globex_retail", partner_id).replace("globex-2026-03", f"{partner_id}-2026-03"))
    monkeypatch.setenv("PIPELINE_EXPECTATIONS_DIR", str(tmp_path / "expectations"))
    monkeypatch.setenv("PIPELINE_WAREHOUSE", "lake")
    settings = load_settings()
    agreements = load_agreements(settings.agreements_dir)
    assert len(agreements) == 4
    for path, text in codegen.generated_files(agreements, settings.expectations_dir).items():
        if path.is_relative_to(settings.expectations_dir):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def deliver(seed: int, rows: int) -> dict[str, int]:
        valid = {}
        for n, partner_id in enumerate(sorted(agreements)):
            truth = synth.write_drop(tmp_path / f"synth-{seed}", settings.landing_bucket,
                                     synth.DropSpec(agreements[partner_id], BUILT_DAY, rows=rows + 100 * n, bad_row_share=0.02),
                                     21, 800, seed + n)
            valid[partner_id] = truth["rows_valid"]
        synth.upload_tree(s3_api, tmp_path / f"synth-{seed}")
        return valid

    def ingest_at_once(run_id: str) -> dict[str, dict]:
        drops = nightly.discover(BUILT_DAY, run_id)
        assert sorted(d.partner_id for d in drops if d.status == "new") == sorted(agreements)
        gate = tmp_path / f"gate-{run_id}"
        gate.mkdir()
        racing = len(drops) if configuration == "postgres" else 1
        procs = [subprocess.Popen([sys.executable, "-c", INGEST, json.dumps(d.to_xcom()), run_id, str(gate), str(racing)],
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "PIPELINE_DATA_DIR": str(tmp_path / f"worker-{run_id}-{d.partner_id}"),
                                       "PIPELINE_LAKE_CATALOG": settings.lake_catalog})
                 for d in drops]
        done = {}
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
            outcome = json.loads(out.strip().splitlines()[-1])
            done[outcome["partner_id"]] = outcome
        nightly.publish([DropOutcome.from_xcom(o) for o in done.values()], BUILT_DAY, run_id)
        return done

    def landed() -> dict[str, tuple[int, int]]:
        with warehouse(load_settings(), read_only=True) as con:
            return {p: (n, d) for p, n, d in con.execute("""SELECT partner_id, count(*), count(DISTINCT delivery_id)
                                                             FROM raw.partner_records GROUP BY 1""").fetchall()}

    first = deliver(31, 1500)
    outcomes = ingest_at_once("first")
    assert {p: (o["status"], o["committed"]) for p, o in outcomes.items()} == {p: ("staged", True) for p in agreements}
    assert landed() == {p: (n, 1) for p, n in first.items()}

    again = deliver(41, 1700)  # re-deliveries: each replaces its partner's rows of the date
    ingest_at_once("again")
    assert landed() == {p: (n, 1) for p, n in again.items()} and again != first
    with warehouse(load_settings(), read_only=True) as con:
        events = con.execute("""SELECT partner_id, list(event ORDER BY rowid) FROM audit.drop_events WHERE run_id = 'again'
                                GROUP BY 1""").fetchall()
    assert dict(events) == {p: ["seen", "verified", "loaded"] for p in agreements}
