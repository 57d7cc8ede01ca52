"""The loopback PostgreSQL (the DuckLake catalog of the tests) works with DuckDB's postgres
extension and never outlives whoever started it."""

import os
import shutil
import signal
import subprocess
import sys
import time

import duckdb
import pytest

from conftest import postgres_dir
from partner_pipeline.lake import load_lake_extensions
from partner_pipeline_dev.local_postgres import local_postgres, postgres_bin_dir
from test_local_s3 import alive

pytestmark = pytest.mark.slow


def psql(server, sql: str) -> str:
    """PostgreSQL's own client: what the server holds, seen without DuckDB."""
    return subprocess.run(
        [str(postgres_bin_dir() / "psql"), "-X", "-tA", "-h", server.host, "-p", str(server.port), "-U", server.user,
         "-d", server.database, "-c", sql],
        env={"PGPASSWORD": server.password, "PATH": os.environ["PATH"]}, check=True, capture_output=True, text=True,
    ).stdout.strip()


def test_duckdb_creates_and_reads_a_table_through_it(postgres_server):
    assert postgres_server.host == "127.0.0.1"
    con = duckdb.connect()
    load_lake_extensions(con)
    server = postgres_server
    con.execute("CREATE SECRET pg (TYPE postgres, HOST ?, PORT ?, DATABASE ?, USER ?, PASSWORD ?)",
                [server.host, server.port, server.database, server.user, server.password])
    con.execute("ATTACH '' AS pg (TYPE postgres, SECRET pg)")
    con.execute("CREATE TABLE pg.public.probe AS SELECT * FROM (VALUES (1, 'a'), (2, 'b')) t(id, name)")
    assert con.execute("SELECT id, name FROM pg.public.probe ORDER BY id").fetchall() == [(1, "a"), (2, "b")]
    assert psql(server, "SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM probe") == "1:a,2:b"
    con.close()
    psql(server, "DROP TABLE probe")


def test_it_listens_on_loopback_only(postgres_server):
    assert psql(postgres_server, "SHOW listen_addresses") == "127.0.0.1"


def test_it_is_stopped_when_the_body_raises():
    root = postgres_dir()
    try:
        with pytest.raises(RuntimeError, match="a failing test"):
            with local_postgres(root) as server:
                pid = server.pid
                assert alive(pid)
                raise RuntimeError("a failing test")
        assert not alive(pid)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_it_dies_with_a_killed_parent():
    """SIGKILL leaves the parent no time to stop it; the parent-death signal kills the postmaster,
    and its backends and helpers exit when they see it gone."""
    root = postgres_dir()
    script = (
        "import pathlib, time\n"
        "from partner_pipeline_dev.local_postgres import local_postgres\n"
        f"with local_postgres(pathlib.Path({str(root)!r})) as s:\n"
        "    print(s.pid, flush=True)\n"
        "    time.sleep(300)\n"
    )
    try:
        parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        server_pid = int(parent.stdout.readline())
        helpers = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(server_pid)], capture_output=True,
                                                       text=True).stdout.split()]
        assert alive(server_pid) and helpers  # checkpointer, walwriter ...
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 15
        while any(alive(pid) for pid in (server_pid, *helpers)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in (server_pid, *helpers) if alive(pid)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
