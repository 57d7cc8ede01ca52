"""A small but real customer-list "audience API" on loopback: the HTTP activation destination.

It exists so the activation client is tested against a real server rather than a mock: it checks
the bearer token and every payload (strictly, so a client bug shows up as a 400 naming the field),
honours Idempotency-Key, and can be told to misbehave (429/5xx, slow answers, dropped connections,
responses lost after applying). The local runs (`make demo`, `make run`, `make airflow`) start one
as the embedded default for each HTTP destination whose Airflow connection is not set.

Standard library only; it stands in for an external platform, so it imports no pipeline code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

HASH_PROFILES = ("canonical", "uid2", "basic", "google")  # same names as agreements.HASH_PROFILES
MEMBER_KEYS = ("email_sha256", "phone_sha256", "partner_person_id")  # a partner's own person id, when the audience takes them
HASH_KEYS = MEMBER_KEYS[:2]
_ROUTE = re.compile(r"/audiences/([^/]+)/members")
_AUDIENCE_ID = re.compile(r"[a-z0-9_]{1,64}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
Member = tuple[str | None, str | None, str | None]


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, consumed by the next non-GET request (see AudienceApi.inject)."""

    kind: str  # "answer" | "status" | "timeout" | "drop" | "drop_after_apply"
    code: int = 0
    retry_after: str | None = None
    body: Any = None
    seconds: float = 0.0

    @classmethod
    def answer(cls) -> Fault:
        """No fault: the request is answered for real (to script a fault after some good requests)."""
        return cls("answer")

    @classmethod
    def status(cls, code: int, retry_after: str | int | None = None, body: Any = None) -> Fault:
        return cls("status", code=code, retry_after=None if retry_after is None else str(retry_after), body=body)

    @classmethod
    def timeout(cls, seconds: float) -> Fault:
        return cls("timeout", seconds=seconds)

    @classmethod
    def drop(cls) -> Fault:
        return cls("drop")

    @classmethod
    def drop_after_apply(cls) -> Fault:
        return cls("drop_after_apply")


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    idempotency_key: str | None
    status: int | None  # None: the connection was dropped without a response
    applied: bool
    members: int
    time: float  # time.monotonic() when the request arrived


@dataclass
class _Reply:
    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)
    applied: bool = False


class _Invalid(ValueError):
    pass


def _error(status: int, message: str, **headers: str) -> _Reply:
    return _Reply(status, {"error": message}, headers)


def _parse_batch(body: bytes, expected_profile: str | None, max_batch_size: int) -> tuple[str, list[Member]]:
    """The operation and member tuples of a POST body; raises _Invalid naming the first bad field."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _Invalid("body: not valid JSON") from None
    if not isinstance(doc, dict):
        raise _Invalid("body: must be a JSON object")
    if extra := sorted(set(doc) - {"operation", "hash_profile", "members"}):
        raise _Invalid(f"body: unexpected field(s) {', '.join(extra)}")
    if (operation := doc.get("operation")) not in ("add", "remove"):
        raise _Invalid(f"operation: must be 'add' or 'remove', got {operation!r}")
    if (profile := doc.get("hash_profile")) not in HASH_PROFILES:
        raise _Invalid(f"hash_profile: must be one of {', '.join(HASH_PROFILES)}, got {profile!r}")
    if expected_profile is not None and profile != expected_profile:
        raise _Invalid(f"hash_profile: this audience API expects {expected_profile!r}, got {profile!r}")
    members = doc.get("members")
    if not isinstance(members, list) or not members:
        raise _Invalid("members: must be a non-empty list")
    if len(members) > max_batch_size:
        raise _Invalid(f"members: {len(members)} members exceeds max_batch_size {max_batch_size}")
    parsed = []
    for i, member in enumerate(members):
        if not isinstance(member, dict):
            raise _Invalid(f"members[{i}]: must be an object")
        if extra := sorted(set(member) - set(MEMBER_KEYS)):
            raise _Invalid(f"members[{i}]: unexpected key(s) {', '.join(extra)}")
        if not member:
            raise _Invalid(f"members[{i}]: needs email_sha256, phone_sha256 or partner_person_id")
        for key in HASH_KEYS:
            if key in member and not (isinstance(member[key], str) and _SHA256_HEX.fullmatch(member[key])):
                raise _Invalid(f"members[{i}].{key}: not 64 lowercase hex characters")
        if "partner_person_id" in member and not (isinstance(member["partner_person_id"], str)
                                                  and 0 < len(member["partner_person_id"]) <= 256):
            raise _Invalid(f"members[{i}].partner_person_id: must be a non-empty string of at most 256 characters")
        parsed.append((member.get("email_sha256"), member.get("phone_sha256"), member.get("partner_person_id")))
    return operation, parsed


def _sort_key(member: Member) -> tuple[str, str, str]:
    return member[0] or "", member[1] or "", member[2] or ""


def _member_dict(member: Member) -> dict[str, str]:
    return {key: value for key, value in zip(MEMBER_KEYS, member) if value is not None}


class AudienceApi:
    """The audience API server; `with AudienceApi(token=...) as api:` serves on api.url until exit."""

    def __init__(self, token: str, *, host: str = "127.0.0.1", port: int = 0, max_batch_size: int = 1000,
                 hash_profile: str | None = None, state_file: Path | None = None):
        if hash_profile is not None and hash_profile not in HASH_PROFILES:
            raise ValueError(f"hash_profile must be one of {HASH_PROFILES} or None, got {hash_profile!r}")
        self.token, self.host, self.port = token, host, port
        self.max_batch_size, self.hash_profile = max_batch_size, hash_profile
        self.state_file = Path(state_file) if state_file else None
        self.applied_count = self.replayed = 0
        self._lock = threading.Lock()  # guards everything below; held across check-apply-remember
        self._audiences: dict[str, set[Member]] = {}
        self._idempotency: dict[str, tuple[str, _Reply]] = {}  # key -> (request digest, reply given)
        self._faults: list[Fault] = []
        self._records: list[RequestRecord] = []
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if self.state_file and self.state_file.exists():
            saved = json.loads(self.state_file.read_text())["audiences"]
            # a state written before partner ids holds (email, phone) pairs
            self._audiences = {aid: {(*m, None)[:3] for m in map(tuple, members)} for aid, members in saved.items()}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def members(self, audience_id: str) -> set[tuple[str | None, str | None]]:
        """The (email_sha256, phone_sha256) of each member."""
        return {m[:2] for m in self.members_with_ids(audience_id)}

    def members_with_ids(self, audience_id: str) -> set[Member]:
        """(email_sha256, phone_sha256, partner_person_id) of each member."""
        with self._lock:
            return set(self._audiences.get(audience_id, ()))

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def start(self) -> AudienceApi:
        self._server = _Server((self.host, self.port), _Handler)
        self._server.api = self
        self.port = self._server.server_address[1]
        self._stopping.clear()
        # a short poll interval: shutdown() waits up to one interval, and tests start many servers
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name=f"audience-api-{self.port}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()  # wakes handlers sleeping on a timeout fault
        self._server.shutdown()
        self._server.server_close()
        with self._lock:  # handler threads idling on keep-alive connections would otherwise keep serving
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._thread.join()
        self._server = None

    def __enter__(self) -> AudienceApi:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _handle(self, method: str, path: str, headers, body: bytes) -> _Reply:
        """Answer one request (no faults here); applies and remembers it if it succeeds."""
        auth = (headers.get("Authorization") or "").encode("utf-8", "replace")
        if not hmac.compare_digest(auth, f"Bearer {self.token}".encode()):
            return _error(401, "Authorization: missing or wrong bearer token")
        route = _ROUTE.fullmatch(path)
        if not route:
            return _error(404, f"no such resource: {path}")
        if method not in ("GET", "POST", "DELETE"):
            return _error(405, f"method {method} not allowed on {path}", Allow="GET, POST, DELETE")
        audience_id = route[1]
        if not _AUDIENCE_ID.fullmatch(audience_id):
            return _error(400, "audience_id: must match [a-z0-9_]{1,64}")
        if method == "GET":
            with self._lock:
                members = sorted(self._audiences.get(audience_id, ()), key=_sort_key)
            return _Reply(200, {"audience_id": audience_id, "members": [_member_dict(m) for m in members]})
        key = headers.get("Idempotency-Key")
        if not key or len(key) > 200:
            return _error(400, "Idempotency-Key: header required, 1 to 200 characters")
        operation, batch = "clear", []
        if method == "POST":
            if (headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
                return _error(400, "Content-Type: must be application/json")
            try:
                operation, batch = _parse_batch(body, self.hash_profile, self.max_batch_size)
            except _Invalid as exc:
                return _error(400, str(exc))
        digest = hashlib.sha256(b"\0".join([method.encode(), path.encode(), body])).hexdigest()
        with self._lock:
            if remembered := self._idempotency.get(key):
                if remembered[0] != digest:
                    return _error(422, "Idempotency-Key reused with a different request")
                self.replayed += 1
                stored = remembered[1]
                return _Reply(stored.status, stored.payload, {**stored.headers, "Idempotent-Replayed": "true"})
            audience = self._audiences.setdefault(audience_id, set())
            if operation == "add":
                audience.update(batch)
            elif operation == "remove":
                audience.difference_update(batch)
            else:
                audience.clear()
            counts = {"operation": operation, "received": len(batch)} if method == "POST" else {}
            reply = _Reply(200, {"audience_id": audience_id, **counts, "size": len(audience)}, applied=True)
            self._idempotency[key] = (digest, reply)
            self.applied_count += 1
            self._save()
            return reply

    def _save(self) -> None:
        """Write all audiences to state_file, atomically (temp file in the same directory, then rename)."""
        if not self.state_file:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        doc = {"audiences": {aid: sorted(m, key=_sort_key) for aid, m in self._audiences.items()}}
        with tempfile.NamedTemporaryFile("w", dir=self.state_file.parent, prefix=self.state_file.name, delete=False) as tmp:
            json.dump(doc, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp.name, self.state_file)


class _Server(ThreadingHTTPServer):
    api: AudienceApi

    def handle_error(self, request, client_address) -> None:
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real API; every reply carries Content-Length
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would delay the body 40 ms
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.api._lock:
            self.server.api._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.api._lock:
            self.server.api._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args) -> None:
        pass  # requests are logged once, through `logging`, in _serve

    def _serve(self) -> None:
        api, arrived, path = self.server.api, time.monotonic(), urlsplit(self.path).path
        body, fault = self._read_body(), None
        if body is None:
            self.close_connection = True  # an unread body would be parsed as the next request
            reply = _error(400, f"Content-Length: invalid, or larger than a batch of {api.max_batch_size} members can be")
        else:
            if self.command != "GET":
                with api._lock:
                    fault = api._faults.pop(0) if api._faults else None
            reply = self._answer(fault, path, body)
        dropped = fault is not None and fault.kind in ("drop", "drop_after_apply")
        with api._lock:
            api._records.append(RequestRecord(self.command, path, self.headers.get("Idempotency-Key"),
                                              None if dropped else reply.status, bool(reply and reply.applied),
                                              _count_members(body), arrived))
        logger.info("%s %s -> %s", self.command, path, f"dropped ({fault.kind})" if dropped else reply.status)
        if dropped:
            self.close_connection = True  # no response at all: the client sees the connection close
            return
        if fault and fault.kind == "timeout":
            api._stopping.wait(fault.seconds)  # recorded already, so a test sees it while its client waits
        self._send(reply)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = do_OPTIONS = _serve

    def _answer(self, fault: Fault | None, path: str, body: bytes) -> _Reply | None:
        if fault and fault.kind == "status":
            return _Reply(fault.code, {"error": f"injected HTTP {fault.code}"} if fault.body is None else fault.body,
                          {"Retry-After": fault.retry_after} if fault.retry_after else {})
        if fault and fault.kind == "timeout":
            return _error(504, "injected timeout")
        if fault and fault.kind == "drop":
            return None
        try:  # no fault, answer or drop_after_apply: answer for real (and the caller may drop the answer)
            return self.server.api._handle(self.command, path, self.headers, body)
        except Exception:
            logger.exception("audience API failed on %s %s", self.command, path)
            return _error(500, "internal error")

    def _read_body(self) -> bytes | None:
        """The request body (b"" without Content-Length), or None if Content-Length is invalid or too large."""
        length = self.headers.get("Content-Length") or "0"
        # a member is at most ~150 bytes of JSON, so anything larger cannot be a valid batch
        if not length.isdecimal() or int(length) > 4096 + 256 * self.server.api.max_batch_size:
            return None
        return self.rfile.read(int(length))

    def _send(self, reply: _Reply) -> None:
        data = json.dumps(reply.payload).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up first (its timeout fired, or it closed)
            self.close_connection = True


def _count_members(body: bytes) -> int:
    try:
        members = json.loads(body).get("members") if body else None
    except (ValueError, UnicodeDecodeError, AttributeError):
        return 0
    return len(members) if isinstance(members, list) else 0


def main() -> None:
    """`python -m partner_pipeline_dev.local_audience_api PORT`: serve until SIGTERM/SIGINT, token from
    $AUDIENCE_API_TOKEN, audiences kept in $AUDIENCE_API_STATE_FILE (the docker-compose stand-in)."""
    import signal
    import sys

    token = os.environ.get("AUDIENCE_API_TOKEN")
    if not token:
        sys.exit("set AUDIENCE_API_TOKEN, the bearer token clients must send")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    state = os.environ.get("AUDIENCE_API_STATE_FILE")
    with AudienceApi(token, host="0.0.0.0", port=int(sys.argv[1]) if len(sys.argv) > 1 else 8391,
                     state_file=Path(state) if state else None) as api:
        logger.info("audience API on port %d (state: %s)", api.port, state or "in memory")
        stop.wait()


if __name__ == "__main__":
    main()
