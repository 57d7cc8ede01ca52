"""Finding the complete drops of a date and proving each is what its manifest says.

A drop is `s3://<landing>/<partner_id>/<drop_date>/`; it is complete once `_SUCCESS` exists.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import posixpath
import re
from dataclasses import asdict, dataclass

from partner_pipeline.agreements import PARTNER_ID, Agreement
from partner_pipeline.problems import DropRejected, Problem
from partner_pipeline.storage import ObjectInfo, list_objects, list_prefixes, read_bytes

MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"
DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def data_suffix(key: str) -> str:
    """The data-file type a key ends with (.csv.gz, not .csv); local copies are named by it, never by the key."""
    return max((s for s in DATA_SUFFIXES if key.endswith(s)), key=len)


@dataclass(frozen=True)
class DropRef:
    """One complete delivery of one partner's drop; JSON-serialisable for XCom."""

    partner_id: str
    drop_date: str
    bucket: str
    prefix: str
    delivery_id: str  # content identity: manifest bytes plus every object's size and ETag
    delivered_at: str  # when _SUCCESS was written (UTC, ISO 8601)
    objects: tuple[tuple[str, int, str], ...]  # (key relative to prefix, size, etag)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DropRef:
        return cls(**{**data, "objects": tuple(tuple(o) for o in data["objects"])})

    @property
    def name(self) -> str:
        return f"{self.partner_id}/{self.drop_date}"


def find_complete_drops(client, bucket: str, day: dt.date) -> tuple[list[DropRef], list[str]]:
    """(complete drops dated `day`, prefixes of drops still arriving: no `_SUCCESS` yet)."""
    complete, incomplete = [], []
    for partner_id in sorted(list_prefixes(client, bucket, "")):
        prefix = f"{partner_id}/{day.isoformat()}/"
        objects = list(list_objects(client, bucket, prefix))
        if not objects:
            continue
        success = next((o for o in objects if o.key == prefix + SUCCESS), None)
        if success is None:
            incomplete.append(prefix)
            continue
        complete.append(_drop_ref(client, bucket, partner_id, day, prefix, objects, success))
    return complete, incomplete


def _drop_ref(client, bucket, partner_id, day, prefix, objects: list[ObjectInfo], success: ObjectInfo) -> DropRef:
    digest = hashlib.sha256()
    manifest = next((o for o in objects if o.key == prefix + MANIFEST), None)
    if manifest is not None:
        digest.update(read_bytes(client, bucket, manifest.key))
    listed = tuple(sorted((o.key[len(prefix):], o.size, o.etag) for o in objects if o.key != success.key))
    digest.update(json.dumps(listed).encode())
    return DropRef(partner_id, day.isoformat(), bucket, prefix, digest.hexdigest()[:20], success.last_modified, listed)


def check_agreement(drop: DropRef, agreements: dict[str, Agreement]) -> Agreement:
    """The agreement that covers this drop, or DropRejected saying why none does."""
    if not PARTNER_ID.match(drop.partner_id):
        raise DropRejected([Problem(
            "unknown_partner", f"folder name {drop.partner_id!r} is not a valid partner_id ([a-z0-9_]{{2,40}}).",
            "Deliver under the partner_id of the data-sharing agreement.", file=drop.prefix)])
    agreement = agreements.get(drop.partner_id)
    if agreement is None:
        raise DropRejected([Problem(
            "unknown_partner", f"no agreement for partner {drop.partner_id!r}.",
            "Add include/agreements/<partner_id>.yaml (PIPELINE_AGREEMENTS_DIR) once an agreement is signed, then re-run the date.",
            file=drop.prefix)])
    day = dt.date.fromisoformat(drop.drop_date)
    if not agreement.is_valid_on(day):
        raise DropRejected([Problem(
            "agreement_not_valid",
            f"agreement {agreement.agreement_id} is valid {agreement.valid_from} to {agreement.valid_to or 'open-ended'}, "
            f"not on {day}.",
            "Renew the agreement (valid_from/valid_to) or ask the partner to stop delivering for this period.",
            file=drop.prefix, field="drop_date")])
    return agreement


@dataclass(frozen=True)
class ManifestFile:
    key: str  # relative to the drop prefix
    rows: int
    sha256: str


def parse_manifest(drop: DropRef, raw: bytes | None, agreement: Agreement) -> list[ManifestFile]:
    """Check manifest.json against the contract and the drop; return its files or DropRejected."""
    where = drop.prefix + MANIFEST
    if raw is None:
        raise DropRejected([Problem("manifest_missing", "the drop has no manifest.json.",
                                    "Write manifest.json (spec: manifest.json) before _SUCCESS.", file=where)])
    try:
        manifest = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DropRejected([Problem("manifest_invalid_json", f"manifest.json is not valid UTF-8 JSON ({exc}).",
                                    "Re-deliver the drop with a well-formed manifest.json.", file=where)]) from None
    if not isinstance(manifest, dict):
        raise DropRejected([Problem("manifest_invalid", "manifest.json must be a JSON object.",
                                    "Re-deliver with the object layout of the spec.", file=where)])
    problems: list[Problem] = []
    expected = {"partner_id": drop.partner_id, "agreement_id": agreement.agreement_id, "drop_date": drop.drop_date}
    for field, value in expected.items():
        if manifest.get(field) != value:
            problems.append(Problem("manifest_mismatch", f"{field} is {manifest.get(field)!r}, expected {value!r}.",
                                    f"Set {field} to {value!r} or deliver under the matching folder/agreement.",
                                    file=where, field=field))
    if manifest.get("schema_version") != 1:
        problems.append(Problem("manifest_invalid", f"schema_version is {manifest.get('schema_version')!r}; this pipeline reads version 1.",
                                "Set schema_version to 1.", file=where, field="schema_version"))
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        problems.append(Problem("manifest_invalid", "files must be a non-empty list.",
                                "List every data file with key, rows and sha256.", file=where, field="files"))
        raise DropRejected(problems)
    parsed: list[ManifestFile] = []
    for index, entry in enumerate(files):
        field = f"files[{index}]"
        if not isinstance(entry, dict):
            problems.append(Problem("manifest_invalid", "each file entry must be an object.", "Use {key, rows, sha256}.",
                                    file=where, field=field))
            continue
        key, rows, sha = entry.get("key"), entry.get("rows"), entry.get("sha256")
        key_problem = _key_problem(key)
        if key_problem:
            problems.append(Problem("key_outside_prefix" if key_problem == "outside" else "manifest_invalid",
                                    f"key {key!r} {'points outside the drop folder ' + drop.prefix if key_problem == 'outside' else key_problem}.",
                                    "Every key is a data file inside the drop's own folder, relative to it (e.g. records-000.csv.gz).",
                                    file=where, field=f"{field}.key"))
            continue
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            problems.append(Problem("manifest_invalid", f"rows is {rows!r}; it must be a whole number >= 0.",
                                    "Write the data row count (header excluded).", file=where, field=f"{field}.rows"))
            continue
        if not isinstance(sha, str) or not _SHA256.match(sha):
            problems.append(Problem("manifest_invalid", f"sha256 {sha!r} is not 64 lowercase hex characters.",
                                    "Write the lowercase hex SHA-256 of the file bytes.", file=where, field=f"{field}.sha256"))
            continue
        parsed.append(ManifestFile(posixpath.normpath(key), rows, sha))
    keys = [f.key for f in parsed]
    for key in sorted({k for k in keys if keys.count(k) > 1}):
        problems.append(Problem("manifest_invalid", f"key {key!r} is listed twice.", "List each file once.", file=where, field="files"))
    record_count = manifest.get("record_count")
    if not problems and record_count != sum(f.rows for f in parsed):
        problems.append(Problem("manifest_invalid", f"record_count {record_count!r} differs from the sum of files[].rows ({sum(f.rows for f in parsed)}).",
                                "Make record_count the total of the files' rows.", file=where, field="record_count"))
    present = {key for key, _, _ in drop.objects}
    for f in parsed:
        if f.key not in present:
            problems.append(Problem("missing_file", f"{f.key} is listed in the manifest but not in the drop.",
                                    "Upload the file before _SUCCESS, or remove it from the manifest.", file=drop.prefix + f.key))
    for key in sorted(present - set(keys) - {MANIFEST}):
        problems.append(Problem("unlisted_file", f"{key} is in the drop but not listed in manifest.json.",
                                "List it in the manifest (key, rows, sha256) or remove it from the drop.", file=drop.prefix + key))
    if problems:
        raise DropRejected(problems)
    return parsed


def _key_problem(key) -> str | None:
    if not isinstance(key, str) or not key:
        return "is not a file name"
    normalized = posixpath.normpath(key)
    # ".." as a path segment leaves the folder; "..records.csv" is a name like any other
    if key.startswith("/") or "\\" in key or normalized == ".." or normalized.startswith("../") or "://" in key:
        return "outside"
    if normalized in (MANIFEST, SUCCESS):
        return "is a control file, not data"
    if not normalized.endswith(DATA_SUFFIXES):
        return f"has an unsupported type (use {', '.join(DATA_SUFFIXES)})"
    return None
