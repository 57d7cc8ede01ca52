"""Partner drops: what a drop is to be (DropSpec, corruptions, bad rows), writing its data files,
manifest.json and _SUCCESS, and the drop's ground truth counted while it is written."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from partner_pipeline.agreements import Agreement, Attribute
from partner_pipeline_dev.synth.files import _DataFile, _bool_strings, _file_sha256, _fresh_dir, _write_json
from partner_pipeline_dev.synth.identities import (CHUNK_ROWS, LIST_LIMIT, MAX_PROFILES, UNIVERSE, People, _coprime_multiplier, _join,
                                                  _permute, _sha256_column, _take, _text_key, _weighted, profile_ids, sha256_hex)

FORMATS = ("csv", "csv.gz", "parquet")
CORRUPTIONS = (
    "checksum_mismatch", "row_count_mismatch", "missing_success", "key_outside_prefix",
    "manifest_mismatch", "extra_column", "special_category_column", "empty_drop", "csv_quirks",
    "corrupt_gzip", "parquet_wrong_types", "missing_file", "unlisted_file", "invalid_manifest_json",
)
# Drops the contract says are still loaded (flagged or not); every other corruption fails the drop.
LOADABLE_CORRUPTIONS = {None: "loaded", "csv_quirks": "loaded", "empty_drop": "loaded", "extra_column": "loaded_flagged"}

CONTRACT_RULES = (
    "partner_record_id_missing", "partner_record_id_duplicate", "identifier_missing",
    "email_sha256_malformed", "phone_sha256_malformed",
    "consent_enrichment_missing", "consent_enrichment_not_boolean",
    "consent_activation_missing", "consent_activation_not_boolean",
    "consent_ts_missing", "consent_ts_invalid", "consent_ts_in_future",
)
MATCHABLE_SHARE = 0.7  # share of a drop's persons drawn from our customers
UNLISTED_FILE_ROWS = 10
CSV_ONLY_RULES = {"consent_enrichment_not_boolean", "consent_activation_not_boolean", "consent_ts_invalid"}


@dataclass(frozen=True)
class DropSpec:
    """One partner drop to write (see the module docstring and the drop contract)."""

    agreement: Agreement
    drop_date: dt.date
    rows: int
    file_format: str = "csv.gz"
    files: int = 1
    bad_row_share: float = 0.0
    corruption: str | None = None
    partner_id: str | None = None
    delivered_at: dt.datetime | None = None
    # share of rows that come in pairs carrying one partner_person_id for two matching persons (so
    # the partner person's records hit two profiles): both rows are ambiguous and linked to nobody
    ambiguous_share: float = 0.0

    def __post_init__(self) -> None:
        if self.file_format not in FORMATS:
            raise ValueError(f"file_format {self.file_format!r}: use one of {FORMATS}")
        if self.rows < 0 or self.files < 1:
            raise ValueError("rows must be >= 0 and files >= 1")
        if not 0.0 <= self.bad_row_share <= 1.0:
            raise ValueError("bad_row_share must lie in [0, 1]")
        if not 0.0 <= self.ambiguous_share <= 0.5:
            raise ValueError("ambiguous_share must lie in [0, 0.5]")
        if self.ambiguous_share and self.corruption == "csv_quirks":
            raise ValueError("ambiguous_share and csv_quirks both rewrite partner_person_id: use one")
        if self.corruption is not None and self.corruption not in CORRUPTIONS:
            raise ValueError(f"corruption {self.corruption!r}: use one of {CORRUPTIONS}")
        needs = {"csv_quirks": ("csv", "csv.gz"), "corrupt_gzip": ("csv.gz",), "parquet_wrong_types": ("parquet",)}
        if self.corruption in needs and self.file_format not in needs[self.corruption]:
            raise ValueError(f"corruption {self.corruption!r} needs file_format in {needs[self.corruption]}")
        if not isinstance(self.drop_date, dt.date) or isinstance(self.drop_date, dt.datetime):
            raise ValueError("drop_date must be a datetime.date")
        if self.delivered_at is not None and self.delivered_at.tzinfo is None:
            raise ValueError("delivered_at must be timezone-aware (UTC)")

    @property
    def effective_partner_id(self) -> str:
        return self.partner_id or self.agreement.partner_id

    @property
    def effective_delivered_at(self) -> dt.datetime:
        if self.delivered_at is not None:
            return self.delivered_at.astimezone(dt.UTC)
        return dt.datetime.combine(self.drop_date, dt.time(0, 0), tzinfo=dt.UTC)

    @property
    def prefix(self) -> str:
        return f"{self.effective_partner_id}/{self.drop_date.isoformat()}/"

    def file_key(self, number: int) -> str:
        return f"records-{number:03d}.{self.file_format}"


def row_rules(agreement: Agreement, file_format: str) -> list[str]:
    """The row rules a drop of this format can break, in a fixed order."""
    parquet = file_format == "parquet"
    rules = [r for r in CONTRACT_RULES if not (parquet and r in CSV_ONLY_RULES)]
    for name, attr in agreement.attributes.items():
        if attr.type != "string" and not parquet:
            rules.append(f"{name}_wrong_type")
        if attr.type == "string" and attr.allowed_values:
            rules.append(f"{name}_not_allowed")
        if attr.type in ("integer", "number") and (attr.min is not None or attr.max is not None):
            rules.append(f"{name}_out_of_range")
    return rules


def _allocate_bad_rows(n_bad: int, rules: list[str], rng: np.random.Generator) -> dict[str, int]:
    base, extra = divmod(n_bad, len(rules))
    counts = dict.fromkeys(rules, base)
    for i in sorted(rng.permutation(len(rules))[:extra].tolist()):
        counts[rules[i]] += 1
    dup = "partner_record_id_duplicate"
    if counts[dup] % 2:  # duplicates come in pairs
        counts[dup] -= 1
        counts["identifier_missing"] += 1
    return counts


def _affine_sample(population: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct integers from [0, population): an affine bijection of 0..k-1 (no big permutation)."""
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    a = _coprime_multiplier(int(rng.integers(1, 1 << 62)), population, limit=population)
    b = int(rng.integers(0, population))
    return (a * np.arange(k, dtype=np.int64) + b) % population


NOT_BOOLEAN = ("yes", "no", "maybe", "si")
WRONG_TYPE = {
    "integer": ("abc", "twelve", "12.5"),
    "number": ("abc", "n.a.", "zero point five"),
    "boolean": NOT_BOOLEAN,
    "date": ("2026-13-45", "not a date", "21/11/2026", "2026-02-30"),
}
BAD_TIMESTAMPS = ("not-a-date", "yesterday", "2026-13-45T99:00:00Z", "20261120 1345")
FREE_TEXT = ("north", "south", "east", "west", "online", "in store", "mobile app", "call centre")
QUIRKY_TEXT = ('said "hello", then left', 'line one\nline two', 'a, b and "c"', 'quote "x"\r\nnext, line')
EXTRA_COLUMN_VALUES = {
    "extra_column": ("favourite_colour", ("blue", "green", "red", "yellow", "purple")),
    "special_category_column": ("health_condition", ("none", "asthma", "diabetes", "hypertension")),
}


def _int_bounds(attr: Attribute) -> tuple[int, int]:
    lo = math.ceil(attr.min) if attr.min is not None else None
    hi = math.floor(attr.max) if attr.max is not None else None
    lo = lo if lo is not None else (hi - 1000 if hi is not None else 0)
    hi = hi if hi is not None else lo + 1000
    return lo, hi


def _attr_valid(attr: Attribute, n: int, rng: np.random.Generator, drop_day: int) -> pa.Array:
    if attr.type == "boolean":
        return pa.array(rng.random(n) < 0.35)
    if attr.type == "integer":
        lo, hi = _int_bounds(attr)
        return pa.array(np.minimum(lo + np.floor(rng.random(n) ** 3 * (hi - lo + 1)).astype(np.int64), hi))
    if attr.type == "number":
        lo = attr.min if attr.min is not None else (attr.max - 1000 if attr.max is not None else 0.0)
        hi = attr.max if attr.max is not None else lo + 1000
        return pa.array(np.clip(np.round(lo + rng.random(n) * (hi - lo), 4), lo, hi))
    if attr.type == "date":
        return pa.array((drop_day - rng.integers(1, 731, n)).astype("datetime64[D]"), pa.date32())
    values = tuple(attr.allowed_values) if attr.allowed_values else FREE_TEXT
    return _take(values, rng.integers(0, len(values), n))


def _attr_bad(attr: Attribute, rule: str, k: int, rng: np.random.Generator, csv: bool) -> pa.Array:
    """k values breaking rule (wrong_type / not_allowed / out_of_range) for this attribute."""
    if rule == "wrong_type":
        return _take(WRONG_TYPE[attr.type], rng.integers(0, len(WRONG_TYPE[attr.type]), k))
    if rule == "not_allowed":
        outside = [v for v in ("unknown", "other", "diamond", "n_a") if v not in attr.allowed_values]
        return _take(tuple(outside), rng.integers(0, len(outside), k))
    above = rng.random(k) < 0.5 if attr.max is not None else np.zeros(k, dtype=bool)
    if attr.min is None:
        above[:] = True
    if attr.type == "integer":
        lo, hi = _int_bounds(attr)
        step = rng.integers(1, 1000, k)
        values = pa.array(np.where(above, hi + step, lo - step))
    else:
        step = np.round(0.01 + rng.random(k) * 10, 2)
        values = pa.array(np.where(above, (attr.max or 0) + step, (attr.min or 0) - step))
    return pc.cast(values, pa.string()) if csv else values


def _replace(arr: pa.Array, mask: np.ndarray, values: pa.Array | None) -> pa.Array:
    """arr with the masked positions replaced, in order, by values (None: by nulls)."""
    k = int(mask.sum())
    if k == 0:
        return arr
    if values is None:
        values = pa.nulls(k, arr.type)
    return pc.replace_with_mask(arr, pa.array(mask), values.cast(arr.type))


def _malformed(digest: str, how: int) -> str:
    if how == 0:
        return digest.upper()
    if how == 1:
        return digest[:63]
    return digest[:40] + "xyz" + digest[43:]


class _DropPlan:
    """The whole-drop decisions made up front: which person each row is, which rule it breaks,
    its record id. Per-row values are drawn per chunk from a chunk-keyed generator."""

    def __init__(self, spec: DropSpec, n_profiles: int, seed: int) -> None:
        self.spec = spec
        self.key = _text_key(f"{spec.effective_partner_id}/{spec.drop_date.isoformat()}")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, self.key, 0])))
        rows = 0 if spec.corruption == "empty_drop" else spec.rows
        extra = UNLISTED_FILE_ROWS if spec.corruption == "unlisted_file" else 0
        self.rows, self.total = rows, rows + extra
        bounds = [rows * f // spec.files for f in range(spec.files + 1)]
        self.files = [(spec.file_key(f), bounds[f], bounds[f + 1], True) for f in range(spec.files)]
        if extra:
            self.files.append((spec.file_key(spec.files), rows, rows + extra, False))
        n_match = min(round(self.total * MATCHABLE_SHARE), n_profiles)
        persons = np.concatenate([
            _affine_sample(n_profiles, n_match, rng),
            n_profiles + _affine_sample(UNIVERSE - n_profiles, self.total - n_match, rng),
        ])
        self.persons = persons[rng.permutation(self.total)] if self.total else persons
        self.rules = row_rules(spec.agreement, spec.file_format)
        self.rule_code = {r: i + 1 for i, r in enumerate(self.rules)}
        self.rule_of = np.zeros(self.total, dtype=np.int16)
        self.record_number = np.arange(1, self.total + 1, dtype=np.int64)
        n_bad = round(rows * spec.bad_row_share)
        self.planned = _allocate_bad_rows(n_bad, self.rules, rng) if n_bad else {}
        if n_bad:
            positions = rng.choice(rows, n_bad, replace=False)
            labels = np.repeat([self.rule_code[r] for r in self.rules], [self.planned[r] for r in self.rules])
            self.rule_of[positions] = labels[rng.permutation(n_bad)].astype(np.int16)
            pairs = np.flatnonzero(self.rule_of == self.rule_code["partner_record_id_duplicate"])
            pairs = pairs[rng.permutation(pairs.size)]
            self.record_number[pairs[1::2]] = self.record_number[pairs[0::2]]
            self.record_number[self.rule_of == self.rule_code["partner_record_id_missing"]] = 0

    def chunk_rng(self, seed: int, start: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, self.key, 1, start])))

    def broke(self, rule_of: np.ndarray, rule: str) -> np.ndarray:
        code = self.rule_code.get(rule)
        return rule_of == code if code else np.zeros(rule_of.shape, dtype=bool)


def _id_prefix(partner_id: str) -> str:
    return partner_id.split("_")[0][:6].upper() or "P"


def partner_person_ids(partner_id: str, indices) -> pa.Array:
    """The partner's own id of each person (stable per partner and person, unrelated across partners)."""
    number = _permute(np.asarray(indices, dtype=np.int64), 10**6, 10**6, _text_key("partner_person_id/" + partner_id))
    return _join(f"{_id_prefix(partner_id)}-", pc.utf8_lpad(pc.cast(pa.array(number), pa.string()), 12, "0"))


def _drop_chunk(plan: _DropPlan, lo: int, hi: int, rng: np.random.Generator, profiles_seed: int,
                n_profiles: int) -> tuple[dict[str, pa.Array], dict[str, np.ndarray]]:
    """Columns for rows [lo, hi) of the drop, and per-row facts for the ground truth."""
    spec, agreement = plan.spec, plan.spec.agreement
    csv = spec.file_format != "parquet"
    n = hi - lo
    people = People(profiles_seed, plan.persons[lo:hi])
    rule_of = plan.rule_of[lo:hi]
    broke = lambda rule: plan.broke(rule_of, rule)  # noqa: E731
    prefix = _id_prefix(spec.effective_partner_id)
    cols: dict[str, pa.Array] = {}

    number = plan.record_number[lo:hi]
    record_id = _join(f"{prefix}-{spec.drop_date:%Y%m%d}-", pc.utf8_lpad(pc.cast(pa.array(number), pa.string()), 9, "0"))
    cols["partner_record_id"] = _replace(record_id, number == 0, None)
    cols["partner_person_id"] = partner_person_ids(spec.effective_partner_id, people.idx)

    kind = _weighted(rng.random(n), (0.60, 0.25, 0.15))  # both | email only | phone only
    has_email, has_phone = kind != 2, kind != 1
    both = broke("email_sha256_malformed") | broke("phone_sha256_malformed")
    has_email, has_phone = (has_email | both), (has_phone | both)
    has_email &= ~broke("identifier_missing")
    has_phone &= ~broke("identifier_missing")
    hp = agreement.hash_profile
    phones = people.base_phones()
    if hp != "basic":
        phones = _join("+", phones)
    for column, present, values, rule in (
        ("email_sha256", has_email, people.base_emails(), "email_sha256_malformed"),
        ("phone_sha256", has_phone, phones, "phone_sha256_malformed"),
    ):
        digests = _sha256_column(values, present)
        bad = np.flatnonzero(broke(rule))
        for i, how in zip(bad.tolist(), rng.integers(0, 3, bad.size).tolist()):
            digests[i] = _malformed(digests[i], how)
        cols[column] = pa.array(digests, pa.string())

    consent = {"consent_enrichment": rng.random(n) >= 0.10, "consent_activation": rng.random(n) >= 0.30}
    for column, values in consent.items():
        arr = _bool_strings(values) if csv else pa.array(values)
        if spec.corruption == "parquet_wrong_types" and column == "consent_enrichment":
            arr = _take(("no", "yes"), values.astype(np.int64))
        arr = _replace(arr, broke(f"{column}_missing"), None)
        not_bool = broke(f"{column}_not_boolean")
        arr = _replace(arr, not_bool, _take(NOT_BOOLEAN, rng.integers(0, len(NOT_BOOLEAN), int(not_bool.sum()))))
        cols[column] = arr

    delivered = int(spec.effective_delivered_at.timestamp())
    ts = delivered - rng.integers(3600, 3 * 365 * 86400, n)  # strictly before delivery
    future = broke("consent_ts_in_future")
    ts = np.where(future, int(dt.datetime(2099, 1, 1, tzinfo=dt.UTC).timestamp()) + rng.integers(0, 86400 * 300, n), ts)
    if csv:
        ts_arr = _join(pc.replace_substring(pc.cast(pa.array(ts, pa.timestamp("s")), pa.string()), " ", "T"), "Z")
        invalid = broke("consent_ts_invalid")
        ts_arr = _replace(ts_arr, invalid, _take(BAD_TIMESTAMPS, rng.integers(0, len(BAD_TIMESTAMPS), int(invalid.sum()))))
    else:
        ts_arr = pa.array(ts * 1_000_000, pa.timestamp("us", tz="UTC"))
    cols["consent_ts"] = _replace(ts_arr, broke("consent_ts_missing"), None)

    drop_day = (spec.drop_date - dt.date(1970, 1, 1)).days
    wrong_typed_integer = _first_integer_attribute(agreement) if spec.corruption == "parquet_wrong_types" else None
    typed: dict[str, pa.Array] = {}  # each attribute's value as generated (what a valid row carries), typed
    for name, attr in agreement.attributes.items():
        arr = typed[name] = _attr_valid(attr, n, rng, drop_day)
        if csv or name == wrong_typed_integer:
            arr = pc.cast(arr, pa.string())
        for rule in ("wrong_type", "not_allowed", "out_of_range"):
            mask = broke(f"{name}_{rule}")
            if mask.any():
                arr = _replace(arr, mask, _attr_bad(attr, rule, int(mask.sum()), rng, csv or name == wrong_typed_integer))
        cols[name] = arr

    person_id_variant = np.zeros(n, dtype=np.int8)  # 0: the plain partner_person_id, k: suffixed with quirk k - 1
    if spec.corruption == "csv_quirks":
        column = _quirks_column(agreement)
        quirky = rng.random(n) < 0.2
        which = rng.integers(0, len(QUIRKY_TEXT), int(quirky.sum()))
        values = _take(QUIRKY_TEXT, which)
        if column == "partner_person_id":  # keep ids unique per person: suffix the quirk
            values = _join(pc.filter(cols[column], pa.array(quirky)), " ", values)
            person_id_variant[quirky] = which + 1
        else:
            typed[column] = _replace(typed[column], quirky, values)
        cols[column] = _replace(cols[column], quirky, values)
    if spec.corruption in EXTRA_COLUMN_VALUES:
        column, choices = EXTRA_COLUMN_VALUES[spec.corruption]
        cols[column] = _take(choices, rng.integers(0, len(choices), n))

    valid = rule_of == 0
    is_customer = people.idx < n_profiles
    email_match = has_email & is_customer & people.email_matches(hp)
    phone_match = has_phone & is_customer & people.phone_matches(agreement.default_country_code)
    ambiguous = np.zeros(n, dtype=bool)
    if spec.ambiguous_share:  # drawn last, so every other value is as without pairs
        matching = np.flatnonzero(valid & (email_match | phone_match))
        pairs = min(round(n * spec.ambiguous_share / 2), matching.size // 2)
        chosen = rng.choice(matching, 2 * pairs, replace=False)
        first, second = chosen[:pairs], chosen[pairs:]
        source = np.arange(n)
        source[second] = first  # the second row of a pair carries the first's partner_person_id
        cols["partner_person_id"] = cols["partner_person_id"].take(pa.array(source))
        ambiguous[chosen] = True
    facts = {
        "valid": valid,
        "consented": valid & consent["consent_enrichment"],
        "by_email": valid & email_match & ~ambiguous,
        "by_phone": valid & ~email_match & phone_match & ~ambiguous,
        "ambiguous": ambiguous,
        "rule_of": rule_of,
        "person": people.idx,
        "consent_enrichment": consent["consent_enrichment"],
        "consent_activation": consent["consent_activation"],
        "person_id_variant": person_id_variant,
        "attributes": typed,
    }
    return cols, facts


def _first_integer_attribute(agreement: Agreement) -> str | None:
    return next((name for name, attr in agreement.attributes.items() if attr.type == "integer"), None)


def _quirks_column(agreement: Agreement) -> str:
    """A free-text string attribute if the agreement has one, else partner_person_id (a string
    column whose content the contract does not restrict)."""
    return next((name for name, attr in agreement.attributes.items() if attr.type == "string" and not attr.allowed_values),
                "partner_person_id")


def drop_columns(spec: DropSpec) -> list[str]:
    columns = ["partner_record_id", "partner_person_id", "email_sha256", "phone_sha256",
               "consent_enrichment", "consent_activation", "consent_ts", *spec.agreement.attributes]
    if spec.corruption in EXTRA_COLUMN_VALUES:
        columns.append(EXTRA_COLUMN_VALUES[spec.corruption][0])
    return columns


_ARROW_TYPES = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_(), "date": pa.date32()}


def _parquet_schema(spec: DropSpec) -> pa.Schema:
    types = _ARROW_TYPES
    fields = [("partner_record_id", pa.string()), ("partner_person_id", pa.string()), ("email_sha256", pa.string()),
              ("phone_sha256", pa.string()), ("consent_enrichment", pa.bool_()), ("consent_activation", pa.bool_()),
              ("consent_ts", pa.timestamp("us", tz="UTC"))]
    wrong_typed_integer = _first_integer_attribute(spec.agreement) if spec.corruption == "parquet_wrong_types" else None
    if spec.corruption == "parquet_wrong_types":
        fields[4] = ("consent_enrichment", pa.string())
    for name, attr in spec.agreement.attributes.items():
        fields.append((name, pa.string() if name == wrong_typed_integer else types[attr.type]))
    if spec.corruption in EXTRA_COLUMN_VALUES:
        fields.append((EXTRA_COLUMN_VALUES[spec.corruption][0], pa.string()))
    return pa.schema(fields)


def expected_status(spec: DropSpec, rows_total: int, rows_invalid: int) -> tuple[str, str | None]:
    """What the contract says should happen to this drop: loaded, loaded_flagged, rejected
    (with the reason) or incomplete (no _SUCCESS yet, so not picked up)."""
    if spec.corruption == "missing_success":
        return "incomplete", "missing_success"
    if spec.effective_partner_id != spec.agreement.partner_id:
        return "rejected", "unknown_partner"
    if not spec.agreement.is_valid_on(spec.drop_date):
        return "rejected", "agreement_not_valid_on_drop_date"
    if spec.corruption not in LOADABLE_CORRUPTIONS:
        return "rejected", spec.corruption
    if rows_total and rows_invalid / rows_total > spec.agreement.max_bad_row_share:
        return "rejected", "bad_row_share_exceeded"
    status = LOADABLE_CORRUPTIONS[spec.corruption]
    return status, spec.corruption if status == "loaded_flagged" else None


class _DropTruth:
    """Ground-truth counters of a drop's listed rows, fed chunk by chunk."""

    def __init__(self, plan: _DropPlan) -> None:
        self.plan = plan
        self.counts: Counter = Counter()
        self.invalid_by_rule: Counter = Counter()
        self.bad_rows: list[dict] | None = [] if np.count_nonzero(plan.rule_of) <= LIST_LIMIT else None
        self.links: list[dict] | None = [] if plan.rows <= LIST_LIMIT else None

    def add(self, key: str, first_row: int, cols: dict[str, pa.Array], facts: dict[str, np.ndarray]) -> None:
        """first_row: 1-based row number within the file of the chunk's first row."""
        valid, consented, rule_of = facts["valid"], facts["consented"], facts["rule_of"]
        self.counts["rows_total"] += valid.size
        self.counts["rows_valid"] += int(valid.sum())
        self.counts["rows_consented"] += int(consented.sum())
        for tag, mask in (("", valid), ("consented_", consented)):
            by_email, by_phone, ambiguous = facts["by_email"] & mask, facts["by_phone"] & mask, facts["ambiguous"] & mask
            self.counts[tag + "by_email"] += int(by_email.sum())
            self.counts[tag + "by_phone"] += int(by_phone.sum())
            self.counts[tag + "ambiguous"] += int(ambiguous.sum())
            self.counts[tag + "unmatched"] += int((mask & ~by_email & ~by_phone & ~ambiguous).sum())
        rules = self.plan.rules
        for code, count in enumerate(np.bincount(rule_of, minlength=len(rules) + 1)[1:].tolist(), start=1):
            if count:
                self.invalid_by_rule[rules[code - 1]] += count
        if self.bad_rows is not None:
            bad = np.flatnonzero(rule_of)
            ids = cols["partner_record_id"].take(pa.array(bad)).to_pylist()
            self.bad_rows += [{"file": key, "row": first_row + i, "partner_record_id": rid, "rule": rules[rule_of[i] - 1]}
                              for i, rid in zip(bad.tolist(), ids)]
        if self.links is not None:
            matched = np.flatnonzero(facts["by_email"] | facts["by_phone"])
            ids = cols["partner_record_id"].take(pa.array(matched)).to_pylist()
            pids = profile_ids(facts["person"][matched]).to_pylist()
            self.links += [{"partner_record_id": rid, "profile_id": pid, "via": "email" if facts["by_email"][i] else "phone",
                            "consented": bool(consented[i])} for i, rid, pid in zip(matched.tolist(), ids, pids)]

    def summary(self) -> dict:
        c = self.counts
        keys = ("by_email", "by_phone", "ambiguous", "unmatched")
        return {
            "rows_total": c["rows_total"],
            "rows_valid": c["rows_valid"],
            "rows_invalid": c["rows_total"] - c["rows_valid"],
            "invalid_by_rule": dict(sorted(self.invalid_by_rule.items())),
            "rows_consented": c["rows_consented"],
            "expected_matches": {k: c[k] for k in keys},
            "expected_matches_consented": {k: c["consented_" + k] for k in keys},
            "bad_rows": None if self.bad_rows is None else sorted(self.bad_rows, key=lambda r: (r["file"], r["row"])),
            "expected_links": self.links,
        }


def string_vocabulary(attr: Attribute) -> tuple[str, ...]:
    """Every value a valid row can carry for a string attribute (its codes in _MatchedRows)."""
    return tuple(attr.allowed_values) if attr.allowed_values else FREE_TEXT + QUIRKY_TEXT


def _compact_values(attr: Attribute, values: pa.Array) -> np.ndarray:
    """Attribute values of valid rows as a compact numpy array: bool; float64 for integer and
    number (the DOUBLE they become; exact, float32 would move values across thresholds); int32
    days since the epoch for dates; int8/int16 codes into string_vocabulary for strings."""
    if values.null_count:
        raise AssertionError("a valid row without an attribute value")
    if attr.type == "boolean":
        return values.to_numpy(zero_copy_only=False)
    if attr.type in ("integer", "number"):
        return pc.cast(values, pa.float64()).to_numpy()
    if attr.type == "date":
        return values.cast(pa.int32()).to_numpy()
    vocabulary = string_vocabulary(attr)
    codes = pc.index_in(values, value_set=pa.array(vocabulary, pa.string()))
    if codes.null_count:
        raise AssertionError(f"a string value outside the vocabulary of the attribute: {values.filter(pc.is_null(codes))[0]}")
    return codes.to_numpy().astype(_compact_dtype(attr))


def _compact_dtype(attr: Attribute) -> type:
    if attr.type == "string":
        return np.int8 if len(string_vocabulary(attr)) <= 127 else np.int16
    return {"boolean": np.bool_, "integer": np.float64, "number": np.float64, "date": np.int32}[attr.type]


class _MatchedRows:
    """The valid rows of a drop's listed files that match a profile, compactly: profile index,
    consent flags, which spelling of partner_person_id they carry, attribute values. About 30
    bytes a row, so a 10M-row drop holds a few hundred MB; the enriched_profiles ground truth is
    built from these facts alone (no hashing, no reading files)."""

    def __init__(self, agreement: Agreement) -> None:
        self.agreement = agreement
        self._parts: list[dict[str, np.ndarray]] = []

    def add(self, facts: dict) -> None:
        rows = np.flatnonzero(facts["by_email"] | facts["by_phone"])  # both imply valid and a customer
        taken = pa.array(rows, pa.int64())
        part = {
            "profile": facts["person"][rows].astype(np.int32),  # < MAX_PROFILES
            "consent_enrichment": facts["consent_enrichment"][rows],
            "consent_activation": facts["consent_activation"][rows],
            "person_id_variant": facts["person_id_variant"][rows],
        }
        for name, attr in self.agreement.attributes.items():
            part["attr:" + name] = _compact_values(attr, facts["attributes"][name].take(taken))
        self._parts.append(part)

    def arrays(self) -> dict[str, np.ndarray]:
        if not self._parts:
            self.add({"by_email": np.zeros(0, bool), "by_phone": np.zeros(0, bool), "person": np.zeros(0, np.int64),
                      "consent_enrichment": np.zeros(0, bool), "consent_activation": np.zeros(0, bool),
                      "person_id_variant": np.zeros(0, np.int8),
                      "attributes": {name: pa.array([], _ARROW_TYPES[attr.type])
                                     for name, attr in self.agreement.attributes.items()}})
        out = {key: np.concatenate([part[key] for part in self._parts]) for key in self._parts[0]}
        self._parts = []
        return out


def write_drop(root: Path, bucket: str, spec: DropSpec, profiles_seed: int, n_profiles: int, seed: int) -> dict:
    """Write one partner drop (data files, manifest.json, _SUCCESS) under <root>/<bucket>/ and
    return its ground truth. profiles_seed and n_profiles must be those of the profile snapshot."""
    return _write_drop(root, bucket, spec, profiles_seed, n_profiles, seed)[0]


def _write_drop(root: Path, bucket: str, spec: DropSpec, profiles_seed: int, n_profiles: int,
                seed: int) -> tuple[dict, dict[str, np.ndarray]]:
    """write_drop, also returning the drop's matched rows (_MatchedRows.arrays)."""
    if not 0 <= n_profiles <= MAX_PROFILES:
        raise ValueError(f"n_profiles must lie in [0, {MAX_PROFILES}]")
    folder = Path(root) / bucket / spec.prefix
    _fresh_dir(folder)
    plan = _DropPlan(spec, n_profiles, seed)
    truth = _DropTruth(plan)
    matched = _MatchedRows(spec.agreement)
    names = drop_columns(spec)
    schema = _parquet_schema(spec) if spec.file_format == "parquet" else None
    quirks = spec.corruption == "csv_quirks"
    outside_key = f"../other_partner/{spec.drop_date.isoformat()}/{spec.file_key(0)}"
    manifest_files = []
    for number, (key, start, stop, listed) in enumerate(plan.files):
        outside = spec.corruption == "key_outside_prefix" and number == 0
        path = Path(os.path.normpath(folder / outside_key)) if outside else folder / key
        with _DataFile(path, spec.file_format, names, schema, bom=quirks, eol="\r\n" if quirks else "\n") as out:
            for lo in range(start, stop, CHUNK_ROWS):
                cols, facts = _drop_chunk(plan, lo, min(lo + CHUNK_ROWS, stop), plan.chunk_rng(seed, lo), profiles_seed, n_profiles)
                out.write(cols)
                if listed:
                    truth.add(key, lo - start + 1, cols, facts)
                    matched.add(facts)
        if listed:
            sha256 = _corrupt_file(path, spec.corruption, number)
            manifest_files.append({"key": outside_key if outside else key, "rows": out.rows, "sha256": sha256})

    if spec.corruption == "checksum_mismatch":
        manifest_files[0]["sha256"] = sha256_hex("not the file bytes:" + manifest_files[0]["sha256"])
    if spec.corruption == "row_count_mismatch":
        manifest_files[0]["rows"] += 1
    if spec.corruption == "missing_file":
        (folder / manifest_files[-1]["key"]).unlink()
    manifest = {
        "partner_id": spec.effective_partner_id,
        "agreement_id": spec.agreement.agreement_id + ("-superseded" if spec.corruption == "manifest_mismatch" else ""),
        "drop_date": spec.drop_date.isoformat(),
        "schema_version": 1,
        "files": manifest_files,
        "record_count": sum(f["rows"] for f in manifest_files),
    }
    if spec.corruption == "invalid_manifest_json":
        text = json.dumps(manifest, sort_keys=True, indent=2)
        (folder / "manifest.json").write_text(text[: len(text) // 2] + ",\n", encoding="utf-8")
    else:
        _write_json(folder / "manifest.json", manifest)
    if spec.corruption != "missing_success":
        (folder / "_SUCCESS").write_bytes(b"")

    summary = truth.summary()
    status, reason = expected_status(spec, summary["rows_total"], summary["rows_invalid"])
    return {
        "partner_id": spec.effective_partner_id,
        "agreement_id": spec.agreement.agreement_id,
        "hash_profile": spec.agreement.hash_profile,
        "drop_date": spec.drop_date.isoformat(),
        "delivered_at": spec.effective_delivered_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "bucket": bucket,
        "prefix": spec.prefix,
        "corruption": spec.corruption,
        "file_format": spec.file_format,
        "manifest_files": manifest_files,
        "expected_status": status,
        "expected_reason": reason,
        **summary,
    }, matched.arrays()


def _corrupt_file(path: Path, corruption: str | None, number: int) -> str:
    """Apply a file-level corruption (corrupt_gzip garbles file 0) and return the final sha256."""
    if corruption == "corrupt_gzip" and number == 0:
        data = bytearray(path.read_bytes())
        cut = max(len(data) * 2 // 3, 14)
        for i in range(10, min(cut, 42)):
            data[i] ^= 0x5A
        path.write_bytes(bytes(data[:cut]))
    return _file_sha256(path)
