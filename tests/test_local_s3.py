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


def files_holding(directory, needle: bytes) -> list[str]:
    return [str(p) for p in directory.rglob("*") if p.is_file() and needle in p.read_bytes()]


def put_then_delete(server, needle: bytes) -> None:
    """A small object and one of several chunks, each holding needle, written then deleted."""
    client = s3_client(server.endpoint_url, server.access_key, server.secret_key)
    client.put_object(Bucket="bucket-a", Key="small.csv", Body=b"id,email_sha256\n1," + needle + b"\n")
    client.put_object(Bucket="bucket-a", Key="large.parquet", Body=os.urandom(9 << 20) + needle + os.urandom(1 << 20))
    client.delete_object(Bucket="bucket-a", Key="small.csv")
    client.delete_object(Bucket="bucket-a", Key="large.parquet")


def test_no_byte_of_a_deleted_object_stays_in_the_store(tmp_path):
    """SeaweedFS only marks a deleted object; reclaim rewrites the volume without it (erasure relies on it)."""
    needle = os.urandom(16).hex().encode()
    with local_s3(tmp_path / "s3", ["bucket-a"], sweep_seconds=None) as server:
        put_then_delete(server, needle)
        assert files_holding(tmp_path / "s3", needle), "the deleted bytes are still in a volume before reclaim"
        server.reclaim()
        assert files_holding(tmp_path / "s3", needle) == []


def test_the_store_is_reclaimed_by_the_sweep_and_at_stop(tmp_path):
    needle, later = os.urandom(16).hex().encode(), os.urandom(16).hex().encode()
    with local_s3(tmp_path / "s3", ["bucket-a"], sweep_seconds=1) as server:
        time.sleep(40)  # past the moment weed mini's maintenance worker turns off the master's own sweep
        put_then_delete(server, needle)
        deadline = time.monotonic() + 60
        while files_holding(tmp_path / "s3", needle) and time.monotonic() < deadline:
            time.sleep(1)
        assert files_holding(tmp_path / "s3", needle) == []
    with local_s3(tmp_path / "s3", ["bucket-a"], sweep_seconds=None) as server:
        put_then_delete(server, later)
    assert files_holding(tmp_path / "s3", later) == []


def test_what_a_killed_run_deleted_is_reclaimed_at_the_next_start(tmp_path):
    """Deletions the filer had handed to the volume server when the run was SIGKILLed (it hands them on
    about a second apart; those still queued then stay as unreferenced chunks: see the README)."""
    needle = os.urandom(16).hex().encode()
    script = (
        "import pathlib, time\n"
        "from partner_pipeline_dev.local_s3 import local_s3\n"
        "from test_local_s3 import put_then_delete\n"
        f"with local_s3(pathlib.Path({str(tmp_path / 's3')!r}), ['bucket-a'], sweep_seconds=None) as s:\n"
        f"    put_then_delete(s, {needle!r})\n"
        "    while not s.holds_deleted_bytes():\n"  # the filer has handed the deletions to the volume
        "        time.sleep(0.1)\n"
        "    print(s.pid, flush=True)\n"
        "    time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.path.dirname(__file__)})
    server_pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert files_holding(tmp_path / "s3", needle), "the killed run left the deleted bytes in a volume"
    with local_s3(tmp_path / "s3", ["bucket-a"], sweep_seconds=None):
        assert files_holding(tmp_path / "s3", needle) == []
