"""A partner's answer to our seed set (spec v2 "Seeds in drops", "Partner ids"): a seed-keyed drop.

The partner reads the seed set we sent (its outbox folder: manifest.json and a seeds file with
seed_id, email_sha256, phone_sha256), looks each seed up in its own universe by the seed's hashes
and sends rows back keyed to the seed. So the ground truth maps a seed to a person through the seed
file's hashes and the synthetic population (identities.People), never through the seed itself: a
seed whose hashes name no person of the partner's universe (e.g. a profile-sensitive email under the
agreement's hash profile, and no usable phone) is simply not found and not returned.

Rows written (one drop, spec layout, manifest and _SUCCESS):
- `seed`: seed_id only (no hash), the partner's own partner_person_id;
- `seed_and_hashes`: seed_id and the person's email/phone hashes (matched by the seed);
- `foreign_seed`: a seed of another agreement's seed set (`foreign_seed_set`), `made_up_seed`: a seed
  we never issued; both break seed_id_unknown;
- `partner_id_only`: a refresh row with partner_person_id alone, for persons the partner sent before
  (`refresh`: partner_person_id -> the profile it is linked to, or None where it is linked to none);
  it breaks identifier_missing where the agreement does not set partner_id_only_rows.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from partner_pipeline.agreements import REQUIRED_RECORD_COLUMNS, Agreement
from partner_pipeline_dev.synth.drops import _attr_valid, partner_person_ids
from partner_pipeline_dev.synth.files import _DataFile, _bool_strings, _file_sha256, _fresh_dir, _write_json
from partner_pipeline_dev.synth.identities import People, _text_key, normalized_phone, profile_ids, sha256_hex

SEED_COLUMNS = ("seed_id", "email_sha256", "phone_sha256")
ROW_KINDS = ("seed", "seed_and_hashes", "foreign_seed", "made_up_seed", "partner_id_only")


@dataclass(frozen=True)
class SeedSet:
    """A seed set as the partner receives it (spec "Seed sets we send")."""

    partner_id: str
    agreement_id: str
    seed_date: str
    rows: list[dict]  # seed_id, email_sha256, phone_sha256

    @classmethod
    def read(cls, folder: Path) -> SeedSet:
        """Read `<outbox>/<partner_id>/seeds/<date>/` (a local mirror): the manifest, then each file it
        lists, checked against its sha256 and row count."""
        folder = Path(folder)
        manifest_path = folder / "manifest.json"
        if not (folder / "_SUCCESS").exists():
            raise ValueError(f"{folder}: no _SUCCESS; the seed set is not complete yet")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("kind") != "seed_set":
            raise ValueError(f"{manifest_path}: field 'kind' is {manifest.get('kind')!r}, a seed set says \"seed_set\"")
        rows: list[dict] = []
        for entry in manifest["files"]:
            path = folder / entry["key"]
            if _file_sha256(path) != entry["sha256"]:
                raise ValueError(f"{path}: bytes do not hash to the manifest's sha256 {entry['sha256']}")
            if entry["key"].endswith(".parquet"):
                table = pq.read_table(path)
            else:
                data = path.read_bytes()
                table = pcsv.read_csv(io.BytesIO(gzip.decompress(data) if entry["key"].endswith(".gz") else data),
                                      convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in SEED_COLUMNS}))
            missing = [c for c in SEED_COLUMNS if c not in table.column_names]
            if missing:
                raise ValueError(f"{path}: column(s) {', '.join(missing)} missing; a seed file has {', '.join(SEED_COLUMNS)}")
            if table.num_rows != entry["rows"]:
                raise ValueError(f"{path}: {table.num_rows} rows, the manifest's files[].rows says {entry['rows']}")
            rows += table.select(list(SEED_COLUMNS)).to_pylist()
        return cls(manifest["partner_id"], manifest["agreement_id"], manifest["drop_date"], rows)


@dataclass(frozen=True)
class SeededDropSpec:
    agreement: Agreement
    drop_date: dt.date
    seed_set: Path  # the partner's seed set folder (local mirror of the outbox)
    returned_share: float = 0.8  # of the seeds found in the partner's universe, the share it sends back
    with_hashes_share: float = 0.3  # of those, the share sent with the person's hashes as well
    foreign_seed_set: Path | None = None  # another agreement's seed set: `foreign_rows` of its seeds are sent
    foreign_rows: int = 2
    made_up_rows: int = 2
    refresh: Mapping[str, str | None] = field(default_factory=dict)  # partner_person_id -> its linked profile
    file_format: str = "csv.gz"  # csv.gz | parquet

    @property
    def prefix(self) -> str:
        return f"{self.agreement.partner_id}/{self.drop_date.isoformat()}/"


def _universe_index(people: People, hash_profile: str) -> tuple[dict[str, int], dict[str, int]]:
    """email hash -> person, phone hash -> person: the partner's universe as it hashes it (base identities)."""
    emails = {sha256_hex(e): int(i) for e, i in zip(people.base_emails().to_pylist(), people.idx.tolist())}
    phones = {sha256_hex(normalized_phone(p, hash_profile)): int(i)
              for p, i in zip(people.base_phones().to_pylist(), people.idx.tolist())}
    return emails, phones


def write_seeded_drop(root: Path, bucket: str, spec: SeededDropSpec, profiles_seed: int, n_profiles: int, seed: int) -> dict:
    """Write the seed-keyed drop under <root>/<bucket>/<partner_id>/<date>/ and return its ground truth:
    `expected_profiles` (partner_record_id -> profile_id of every valid row expected to match),
    `expected_unmatched` (valid rows expected to match nothing), `expected_invalid` (rule -> record ids),
    `linked_persons` (partner_person_id -> profile_id, for a later drop's refresh rows) and counts."""
    agreement = spec.agreement
    seeds = SeedSet.read(spec.seed_set)
    if seeds.partner_id != agreement.partner_id or seeds.agreement_id != agreement.agreement_id:
        raise ValueError(f"{spec.seed_set}: a seed set of {seeds.partner_id}/{seeds.agreement_id}, "
                         f"not of {agreement.partner_id}/{agreement.agreement_id}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _text_key("seeded/" + spec.prefix)])))
    people = People(profiles_seed, np.arange(n_profiles))
    by_email, by_phone = _universe_index(people, agreement.hash_profile)

    # each seed the partner finds, through the seed file's hashes only
    found = []
    for row in seeds.rows:
        person = by_email.get(row["email_sha256"] or "")
        if person is None:
            person = by_phone.get(row["phone_sha256"] or "")
        if person is not None:
            found.append((row["seed_id"], person))
    returned = [f for f, keep in zip(found, rng.random(len(found)) < spec.returned_share) if keep]

    kinds, seed_ids, persons = [], [], []
    for (seed_id, person), with_hashes in zip(returned, rng.random(len(returned)) < spec.with_hashes_share):
        kinds.append("seed_and_hashes" if with_hashes else "seed")
        seed_ids.append(seed_id)
        persons.append(person)
    if spec.foreign_rows:
        if spec.foreign_seed_set is None:
            raise ValueError("foreign_rows needs foreign_seed_set (another agreement's seed set)")
        foreign = SeedSet.read(spec.foreign_seed_set)
        if foreign.agreement_id == agreement.agreement_id:
            raise ValueError(f"{spec.foreign_seed_set}: foreign_seed_set must be another agreement's seed set")
        for row in foreign.rows[:spec.foreign_rows]:
            kinds.append("foreign_seed")
            seed_ids.append(row["seed_id"])
            persons.append(None)
    issued = {r["seed_id"] for r in seeds.rows}
    for n in range(spec.made_up_rows):
        made_up = "made-up-" + sha256_hex(f"{spec.prefix}{n}")[:24]
        assert made_up not in issued
        kinds.append("made_up_seed")
        seed_ids.append(made_up)
        persons.append(None)
    refresh = sorted(spec.refresh.items())
    for _ in refresh:
        kinds.append("partner_id_only")
        seed_ids.append(None)
        persons.append(None)

    n = len(kinds)
    prefix = agreement.partner_id.split("_")[0][:6].upper() or "P"
    record_ids = [f"{prefix}-S{spec.drop_date:%Y%m%d}-{i:06d}" for i in range(1, n + 1)]
    known = [p for p in persons if p is not None]
    person_ids = dict(zip(known, partner_person_ids(agreement.partner_id, known).to_pylist())) if known else {}
    base = {int(i): (e, p) for i, e, p in zip(people.idx.tolist(), people.base_emails().to_pylist(), people.base_phones().to_pylist())}
    refresh_ids = iter(person_id for person_id, _ in refresh)
    partner_person, email, phone = [], [], []
    for kind, person in zip(kinds, persons):
        if kind == "partner_id_only":
            partner_person.append(next(refresh_ids))
        else:
            partner_person.append(person_ids.get(person))
        hashes = kind == "seed_and_hashes"
        email.append(sha256_hex(base[person][0]) if hashes else None)
        phone.append(sha256_hex(normalized_phone(base[person][1], agreement.hash_profile)) if hashes else None)

    csv = spec.file_format != "parquet"
    delivered = int(dt.datetime.combine(spec.drop_date, dt.time(0, 0), tzinfo=dt.UTC).timestamp())
    ts = delivered - rng.integers(3600, 365 * 86400, n)
    consent = {"consent_enrichment": np.ones(n, dtype=bool), "consent_activation": rng.random(n) >= 0.3}
    cols: dict[str, pa.Array] = {
        "partner_record_id": pa.array(record_ids, pa.string()),
        "partner_person_id": pa.array(partner_person, pa.string()),
        "email_sha256": pa.array(email, pa.string()),
        "phone_sha256": pa.array(phone, pa.string()),
        **{c: _bool_strings(v) if csv else pa.array(v) for c, v in consent.items()},
        "consent_ts": pa.array([dt.datetime.fromtimestamp(int(t), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for t in ts], pa.string()),
        "seed_id": pa.array(seed_ids, pa.string()),
    }
    drop_day = (spec.drop_date - dt.date(1970, 1, 1)).days
    for name, attr in agreement.attributes.items():
        values = _attr_valid(attr, n, rng, drop_day)
        cols[name] = pc.cast(values, pa.string()) if csv else values
    names = [*REQUIRED_RECORD_COLUMNS, "seed_id", *agreement.attributes]

    folder = Path(root) / bucket / spec.prefix
    _fresh_dir(folder)
    key = f"records-000.{spec.file_format}"
    schema = pa.schema([(c, cols[c].type) for c in names]) if not csv else None
    with _DataFile(folder / key, spec.file_format, names, schema) as out:
        if n:
            out.write({c: cols[c] for c in names})
    manifest = {"partner_id": agreement.partner_id, "agreement_id": agreement.agreement_id,
                "drop_date": spec.drop_date.isoformat(), "schema_version": 1,
                "files": [{"key": key, "rows": n, "sha256": _file_sha256(folder / key)}], "record_count": n}
    _write_json(folder / "manifest.json", manifest)
    (folder / "_SUCCESS").write_bytes(b"")

    expected_profiles, expected_unmatched, linked = {}, [], {}
    invalid: dict[str, list[str]] = {}
    our_profile = dict(zip(known, profile_ids(known).to_pylist())) if known else {}
    refreshed = dict(refresh)
    for record_id, kind, person, person_id in zip(record_ids, kinds, persons, partner_person):
        if kind in ("foreign_seed", "made_up_seed"):
            invalid.setdefault("seed_id_unknown", []).append(record_id)
        elif kind == "partner_id_only" and not agreement.partner_id_only_rows:
            invalid.setdefault("identifier_missing", []).append(record_id)
        elif kind == "partner_id_only":
            if refreshed[person_id] is None:
                expected_unmatched.append(record_id)
            else:
                expected_profiles[record_id] = refreshed[person_id]
        else:
            expected_profiles[record_id] = linked[person_id] = our_profile[person]
    return {
        "partner_id": agreement.partner_id, "agreement_id": agreement.agreement_id, "drop_date": spec.drop_date.isoformat(),
        "prefix": spec.prefix, "seed_date": seeds.seed_date, "seeds_in_set": len(seeds.rows), "seeds_found": len(found),
        "rows_total": n, "rows_by_kind": {k: kinds.count(k) for k in ROW_KINDS},
        "rows_invalid": sum(len(v) for v in invalid.values()), "expected_invalid": invalid,
        "expected_profiles": expected_profiles, "expected_unmatched": expected_unmatched, "linked_persons": linked,
        "seeds_returned": sorted({s for s, k in zip(seed_ids, kinds) if k in ("seed", "seed_and_hashes")}),
        "record_kinds": dict(zip(record_ids, kinds)),
    }
