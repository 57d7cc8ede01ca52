"""A real PostgreSQL (Debian's `postgresql` package) on loopback: the DuckLake catalog of the tests.

Like local_s3: a free port chosen at start, the server stopped on exit and on a failing test, and
(through PR_SET_PDEATHSIG) killed when its parent dies. `postgres` is started directly, not with
pg_ctl, which daemonizes and would escape both the stop and the parent-death signal.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from partner_pipeline_dev.local_s3 import free_ports

USER = "lake"
DATABASE = "lake_catalog"
# initdb and postgres refuse to run as root; as root they run as this user instead.
UNPRIVILEGED_USER = "nobody"


@dataclass(frozen=True)
class LocalPostgres:
    host: str
    port: int
    user: str
    database: str
    password: str = field(repr=False)
    pid: int

    @property
    def dsn(self) -> str:
        """A libpq connection string without the password (give that separately, e.g. PGPASSWORD)."""
        return f"host={self.host} port={self.port} dbname={self.database} user={self.user}"

    def env(self) -> dict[str, str]:
        """The variables that make the pipeline use this server as its DuckLake catalog."""
        return {"PIPELINE_LAKE_CATALOG": f"postgres:{self.dsn}", "PIPELINE_LAKE_CATALOG_PASSWORD": self.password}


def postgres_bin_dir() -> Path:
    """Debian's newest installed PostgreSQL (/usr/lib/postgresql/<version>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise FileNotFoundError("PostgreSQL not found in /usr/lib/postgresql/*/bin: run `make postgres` "
                                "(Debian's postgresql package)")
    return found[-1].parent


def _demote_and_die_with_parent(uid: int | None, gid: int | None, parent: int):
    def preexec() -> None:
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if uid is not None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        # after setuid: the kernel clears the parent-death signal when the credentials change
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)
    return preexec


def _run_as() -> tuple[int | None, int | None]:
    if os.geteuid() != 0:
        return None, None
    entry = pwd.getpwnam(UNPRIVILEGED_USER)
    return entry.pw_uid, entry.pw_gid


def _check_reachable(path: Path, uid: int) -> None:
    """As root, the server runs as UNPRIVILEGED_USER, who must be able to walk down to its directory.
    pytest's tmp_path is not reachable (/tmp/pytest-of-root is 0700): use tempfile.mkdtemp()."""
    for ancestor in reversed(path.parents):
        st = ancestor.stat()
        if not (st.st_mode & 0o001 or (st.st_uid == uid and st.st_mode & 0o100)):
            raise PermissionError(f"{ancestor} is not searchable by {UNPRIVILEGED_USER!r}, whom PostgreSQL runs as "
                                  "under root: give local_postgres a directory that user can reach (tempfile.mkdtemp())")


@contextmanager
def local_postgres(data_dir: Path, timeout: float = 60.0) -> Iterator[LocalPostgres]:
    """initdb a cluster in data_dir/pgdata (once), serve it on 127.0.0.1, yield its parameters; always stop it."""
    bin_dir = postgres_bin_dir()
    uid, gid = _run_as()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    password_file = data_dir / "password"  # kept beside the cluster: a restart on the same directory reuses it
    if uid is not None:
        _check_reachable(data_dir, uid)
        os.chown(data_dir, uid, gid)
    if not (pgdata / "PG_VERSION").exists():
        password_file.write_text(secrets.token_urlsafe(24))
        password_file.chmod(0o600)
        pgdata.mkdir(mode=0o700, exist_ok=True)
        if uid is not None:
            for path in (pgdata, password_file):
                os.chown(path, uid, gid)
        initdb = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(pgdata), "-U", USER, "--auth=scram-sha-256",
             f"--pwfile={password_file}", "--encoding=UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, env=_env(), preexec_fn=_demote_and_die_with_parent(uid, gid, os.getpid()))
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed ({initdb.returncode}): {initdb.stderr.strip()}")
    password = password_file.read_text().strip()
    (port,) = free_ports(1)
    log = open(data_dir / "postgres.log", "ab")
    args = [
        str(bin_dir / "postgres"), "-D", str(pgdata), "-p", str(port),
        "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={pgdata}",
        # a throwaway test server: durability across a machine crash buys nothing and costs seconds
        "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
    ]
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=_env(),
                            preexec_fn=_demote_and_die_with_parent(uid, gid, os.getpid()))
    server = LocalPostgres("127.0.0.1", port, USER, DATABASE, password, proc.pid)
    try:
        _wait_ready(server, proc, bin_dir, timeout, data_dir)
        yield server
    finally:
        _stop(proc)
        log.close()


def _env() -> dict[str, str]:
    # no PG* variables of the caller's leak in (PGDATA, PGPORT ...), and a locale that always exists
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}


def _wait_ready(server: LocalPostgres, proc: subprocess.Popen, bin_dir: Path, timeout: float, data_dir: Path) -> None:
    deadline = time.monotonic() + timeout
    env = {**_env(), "PGPASSWORD": server.password}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with code {proc.returncode}; see {data_dir / 'postgres.log'}")
        ready = subprocess.run([str(bin_dir / "pg_isready"), "-q", "-h", server.host, "-p", str(server.port)], env=env)
        if ready.returncode == 0:
            break
        time.sleep(0.2)
    else:
        raise TimeoutError(f"postgres did not accept connections within {timeout:.0f}s; see {data_dir / 'postgres.log'}")
    create_database(server, DATABASE)  # once per cluster


def create_database(server: LocalPostgres, name: str) -> LocalPostgres:
    """Create database `name` if missing (e.g. one DuckLake catalog per test); the server's parameters for it."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
        raise ValueError(f"{name!r} is not a database name this helper makes ([a-z][a-z0-9_]*)")
    psql = [str(postgres_bin_dir() / "psql"), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-h", server.host,
            "-p", str(server.port), "-U", server.user, "-d", "postgres"]
    env = {**_env(), "PGPASSWORD": server.password}
    exists = subprocess.run([*psql, "-c", f"select 1 from pg_database where datname = '{name}'"],
                            env=env, check=True, capture_output=True, text=True)
    if not exists.stdout.strip():
        subprocess.run([*psql, "-c", f"create database {name}"], env=env, check=True, capture_output=True)
    return replace(server, database=name)


def create_role(server: LocalPostgres, name: str, password: str, database: str) -> LocalPostgres:
    """Create login role `name` (if missing) that may connect to `database`; the server's parameters as that role."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
        raise ValueError(f"{name!r} is not a role name this helper makes ([a-z][a-z0-9_]*)")
    psql = [str(postgres_bin_dir() / "psql"), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-h", server.host,
            "-p", str(server.port), "-U", server.user, "-d", "postgres", "-v", f"role={name}", "-v", f"password={password}",
            "-v", f"database={database}"]
    script = """SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'role', :'password')
                WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \\gexec
                SELECT format('GRANT CONNECT ON DATABASE %I TO %I', :'database', :'role') \\gexec"""
    subprocess.run(psql, input=script, env={**_env(), "PGPASSWORD": server.password}, check=True, capture_output=True, text=True)
    return replace(server, user=name, database=database, password=password)


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT is PostgreSQL's fast shutdown (roll back sessions, checkpoint, exit); SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGINT)  # the postmaster stops its backends itself
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
