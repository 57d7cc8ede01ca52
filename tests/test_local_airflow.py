"""`make airflow`: Airflow 3 standalone and the local S3 come up healthy and Ctrl-C stops every process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from partner_pipeline_dev.local_airflow import admin_password


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_of(marker: str) -> list[int]:
    """Live processes whose command line or environment mentions marker (this test's data dir)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f, open(f"/proc/{pid}/environ", "rb") as e:
                if marker.encode() in f.read() + e.read():
                    found.append(int(pid))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


@pytest.mark.e2e
def test_airflow_serves_the_dag_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    env = {**os.environ, "PIPELINE_DATA_DIR": str(tmp_path / "data")}
    env.pop("PIPELINE_S3_ENDPOINT_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "partner_pipeline_dev.local_airflow", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline, health = time.monotonic() + 240, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=5) as response:
                    health = response.read().decode()
                    if '"scheduler":{"status":"healthy"' in health:
                        break
            except OSError:
                pass
            time.sleep(2)
        assert proc.poll() is None, f"make airflow stopped on its own:\n{proc.stdout.read()}"
        assert health and '"metadatabase":{"status":"healthy"}' in health, health
        assert (tmp_path / "data" / "airflow" / "simple_auth_manager_passwords.json.generated").exists()
        assert len(processes_of(str(tmp_path))) >= 4  # the marker finds the running components
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    output = proc.stdout.read()
    assert f"Airflow UI: http://127.0.0.1:{port}  user: admin  password:" in output
    assert "stopping Airflow" in output
    deadline = time.monotonic() + 20
    while processes_of(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_of(str(tmp_path)) == [], "a component of the local Airflow or S3 outlived Ctrl-C"


class _Running:
    """A server that has not stopped (admin_password only asks whether it has)."""

    def poll(self):
        return None


def test_the_admin_password_is_read_once_standalone_has_written_it(tmp_path):
    """Standalone creates its passwords file empty and writes it a moment later: `make airflow` once
    read the empty file, failed on it and stopped Airflow (seen under the full test suite's load)."""
    passwords = tmp_path / "simple_auth_manager_passwords.json.generated"
    passwords.touch()
    writer = threading.Timer(1.5, passwords.write_text, [json.dumps({"admin": "s3cret"})])
    writer.start()
    try:
        assert admin_password(tmp_path, _Running(), timeout=30) == "s3cret"
    finally:
        writer.cancel()
    assert admin_password(tmp_path / "absent", _Running(), timeout=1) is None
