"""Airflow on the embedded defaults: SQLite metadata under a project-local AIRFLOW_HOME.

`run_nightly` runs the nightly DAG in-process (`airflow dags test`) for `make demo`, `make run`
and the end-to-end tests; `serve` (`make airflow`) runs the whole local Airflow with its UI.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from partner_pipeline.settings import PROJECT_ROOT, WAREHOUSE_POOL

DAG_ID = "partner_drops_nightly"


def airflow_env(airflow_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
        "GX_ANALYTICS_ENABLED": "False",
        "NO_COLOR": "1",
        # standalone starts its components as `airflow ...`: find this environment's airflow first
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    })
    env.update(extra or {})
    return env


def _airflow(args: list[str], env: dict[str, str], check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("airflow")), *args]
    return subprocess.run(command, env=env, check=check, text=True,
                          stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None)


def prepare(airflow_home: Path, env: dict[str, str]) -> None:
    """Create the metadata database and the warehouse pool once per AIRFLOW_HOME."""
    airflow_home.mkdir(parents=True, exist_ok=True)
    marker = airflow_home / ".prepared"
    if marker.exists():
        return
    _airflow(["db", "migrate"], env, capture=True)
    _airflow(["pools", "set", WAREHOUSE_POOL, "1", "Warehouse tasks that must write alone"], env, capture=True)
    marker.touch()


def run_nightly(day: str, airflow_home: Path, extra_env: dict[str, str] | None = None, capture: bool = True) -> subprocess.CompletedProcess:
    """`airflow dags test partner_drops_nightly <day>`: every task in this process, no scheduler needed."""
    env = airflow_env(airflow_home, extra_env)
    prepare(airflow_home, env)
    return _airflow(["dags", "test", DAG_ID, day], env, check=False, capture=capture)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background shell leaves SIGINT ignored


def _stop_group(server: subprocess.Popen) -> None:
    """SIGINT to standalone (it stops its components), then the whole group firmly if it lingers."""
    for sig, grace in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.kill(server.pid, sig) if sig == signal.SIGINT else os.killpg(server.pid, sig)
        except ProcessLookupError:
            pass
        try:
            server.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        if sig != signal.SIGINT or not _group_alive(server.pid):
            break
    try:
        os.killpg(server.pid, signal.SIGKILL)  # no orphan component survives
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def serve(port: int = 8080) -> int:
    """`make airflow`: Airflow 3 standalone (api-server, scheduler, dag-processor, triggerer) and the
    embedded S3 server, on 127.0.0.1, until Ctrl-C stops them all."""
    from partner_pipeline.settings import load_settings
    from partner_pipeline_dev.services import embedded_services

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # Ctrl-C, and also SIGINT/SIGTERM when started in the background (which leaves SIGINT ignored)
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    settings = load_settings()
    home = settings.data_dir / "airflow"
    with embedded_services(settings) as services_env:
        env = standalone_env(home, port, services_env)
        print(f"starting Airflow on http://127.0.0.1:{port} (log: {home / 'standalone.log'}) ...", flush=True)
        with standalone(home, env) as server:
            try:
                password = admin_password(home, server)
                if password:
                    print(f"Airflow UI: http://127.0.0.1:{port}  user: admin  password: {password}\nCtrl-C stops everything.", flush=True)
                return server.wait()
            except KeyboardInterrupt:
                print("stopping Airflow ...", flush=True)
                return 0


def standalone_env(home: Path, port: int, extra: dict[str, str]) -> dict[str, str]:
    """airflow_env for standalone on 127.0.0.1:port with the LocalExecutor and one admin user."""
    # BASE_URL also tells the task runners where the execution API is (default localhost:8080, whatever PORT)
    return airflow_env(home, {"AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
                              "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}", "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                              "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin", **extra})


@contextlib.contextmanager
def standalone(home: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """`airflow standalone` in its own process group (log: home/standalone.log), stopped with every
    component on the way out, also on an error."""
    prepare(home, env)
    server = subprocess.Popen([str(Path(sys.executable).with_name("airflow")), "standalone"], env=env,
                              start_new_session=True, preexec_fn=_default_sigint,
                              stdout=open(home / "standalone.log", "ab"), stderr=subprocess.STDOUT)
    try:
        yield server
    finally:
        _stop_group(server)


def admin_password(home: Path, server: subprocess.Popen, timeout: float = 120) -> str | None:
    """The admin's password, once standalone has generated it (None if it stopped or took too long)."""
    passwords = home / "simple_auth_manager_passwords.json.generated"
    deadline = time.monotonic() + timeout
    while True:
        try:
            return json.loads(passwords.read_text())["admin"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            # standalone creates the file empty and writes it a moment later (on a busy machine, seconds)
            if server.poll() is not None or time.monotonic() >= deadline:
                return None
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]) if len(sys.argv) > 1 else 8080))
