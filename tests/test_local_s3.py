"""The embedded S3 server never outlives whoever started it, and two runs never share a port."""

import os
import signal
import subprocess
import sys
import time

import pytest

from partner_pipeline.storage import s3_client
from partner_pipeline_dev.local_s3 import local_s3

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone for our purpose
        return stat.read().split()[2] != "Z"


def test_two_servers_side_by_side_then_both_stopped(tmp_path):
    with local_s3(tmp_path / "a", ["bucket-a"]) as a, local_s3(tmp_path / "b", ["bucket-b"]) as b:
        assert a.endpoint_url != b.endpoint_url
        s3_client(a.endpoint_url, a.access_key, a.secret_key).put_object(Bucket="bucket-a", Key="k", Body=b"a")
        names = {x["Name"] for x in s3_client(b.endpoint_url, b.access_key, b.secret_key).list_buckets()["Buckets"]}
        assert names == {"bucket-b"}
        pids = (a.pid, b.pid)
    assert not any(alive(pid) for pid in pids)


def test_server_is_stopped_when_the_body_raises(tmp_path):
    try:
        with local_s3(tmp_path / "s3") as server:
            pid = server.pid
            raise RuntimeError("a failing test")
    except RuntimeError:
        pass
    assert not alive(pid)


def test_server_dies_with_a_killed_parent(tmp_path):
    """SIGKILL leaves no time for cleanup; the kernel's parent-death signal stops the server."""
    script = (
        "import sys, time, pathlib\n"
        "from partner_pipeline_dev.local_s3 import local_s3\n"
        f"with local_s3(pathlib.Path({str(tmp_path / 's3')!r})) as s:\n"
        "    print(s.pid, flush=True)\n"
        "    time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    server_pid = int(parent.stdout.readline())
    assert alive(server_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(server_pid)
