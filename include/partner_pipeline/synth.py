"""Deterministic synthetic data: first-party profiles, partner drops and their ground truth.

Everything written is a pure function of the arguments and the seed (gzip mtime 0, no clock in
any content, JSON with sorted keys), so two runs give byte-identical trees. Output goes to a
local tree that mirrors object storage, `<root>/<bucket>/<key>`; `upload_tree` copies it to S3.

The person model
----------------
A synthetic person is an index `i` in `[0, UNIVERSE)`; every fact about a person (name, base
email, base phone, how the customer typed them) is a pure function of `(profiles_seed, i)`, so
any subset of persons can be rebuilt, vectorised, without reading the profile files. Persons
`0 .. n_profiles-1` are our customers (profile_id `p` + 10 digits of `i + 1`); the others are
people only partners know.

Each person has a BASE email that is already normalized under every hash profile (lowercase, no
whitespace, never googlemail.com, and for gmail.com no `.` or `+` in the local part) and a base
phone (E.164 digits). Bases are unique: the local part ends in a digit run that is a bijection of
`i`, and the national phone number is another bijection of `i`. Partners hash the base, so a
partner row matches a profile iff the profile's raw email (or phone) normalizes to the base under
the agreement's hash profile. Raw profile emails differ from the base only by case and
surrounding whitespace, which every profile removes, except for a deterministic minority of
gmail customers whose raw email has dots, a `+tag` and/or googlemail.com ("profile-sensitive").
Raw phones without `+` carry no country code and take the agreement's `default_country_code`.

Enrichment and segments
-----------------------
generate_scenario also states what the pipeline should build from the scenario: per partner the
profiles its data enriches (`expected_enriched`) and every segment's size (`segments`). They come
from the generator's own facts, never from re-hashing: while a drop is written, its valid rows
that match a profile are kept compactly (profile index, consent flags, attribute values), the
expected enriched_profiles mart is assembled from them and the first-party values written, and
each segment rule of the dbt project's YAML is evaluated over it with DuckDB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from partner_pipeline.agreements import HASH_PROFILES, Agreement, Attribute

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
CSV_ONLY_RULES = {"consent_enrichment_not_boolean", "consent_activation_not_boolean", "consent_ts_invalid"}

CHUNK_ROWS = 500_000  # rows generated and written at a time (bounds memory)
UNIVERSE = 100_000_000  # person indices: [0, n_profiles) customers, [n_profiles, UNIVERSE) strangers
MAX_PROFILES = 50_000_000
MATCHABLE_SHARE = 0.7  # share of a drop's persons drawn from our customers
LIST_LIMIT = 10_000  # ground truth lists row-level detail up to this many items
UNLISTED_FILE_ROWS = 10
GZIP_LEVEL = 1  # hex digests barely compress better at 6, which is 3x slower
SENSITIVE_SHARE_OF_GMAIL = 0.15
PROFILE_PHONE_NULL_SHARE = 0.08

FIRST_NAMES = (
    "james", "mary", "john", "patricia", "robert", "jennifer", "michael", "linda", "david", "susan",
    "william", "jessica", "richard", "sarah", "joseph", "karen", "thomas", "nancy", "charles", "lisa",
    "daniel", "betty", "matthew", "sandra", "anthony", "ashley", "mark", "emily", "paul", "donna",
    "steven", "michelle", "andrew", "carol", "joshua", "amanda", "kevin", "melissa", "brian", "deborah",
    "george", "stephanie", "timothy", "rebecca", "ronald", "laura", "jason", "helen", "jane", "saoirse",
    "liam", "aoife", "noah", "olivia", "mateo", "sofia", "wei", "mei", "arjun", "priya", "kwame", "amara",
)
LAST_NAMES = (
    "smith", "johnson", "williams", "brown", "jones", "garcia", "miller", "davis", "rodriguez", "martinez",
    "hernandez", "lopez", "gonzalez", "wilson", "anderson", "thomas", "taylor", "moore", "jackson", "martin",
    "lee", "perez", "thompson", "white", "harris", "sanchez", "clark", "ramirez", "lewis", "robinson",
    "walker", "young", "allen", "king", "wright", "scott", "torres", "nguyen", "hill", "flores",
    "green", "adams", "nelson", "baker", "hall", "rivera", "campbell", "mitchell", "carter", "roberts",
    "murphy", "kelly", "obrien", "chen", "wang", "patel", "kim", "singh", "mensah", "okafor", "schmidt", "muller",
)
DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com", "example.com", "example.org", "mail.example.net")
DOMAIN_WEIGHTS = (0.40, 0.12, 0.10, 0.08, 0.08, 0.10, 0.06, 0.06)
LOCAL_SEPARATORS = ("", ".", "_")  # non-gmail only; a gmail base never has a dot
PLUS_TAGS = ("news", "shop", "work", "promo", "deals", "2025")
COUNTRIES = ("US", "CA", "GB", "DE")
COUNTRY_CODES = ("1", "1", "44", "49")
COUNTRY_WEIGHTS = (0.80, 0.08, 0.07, 0.05)
# raw phone formats: (650) 555-1212 | 650-555-1212 | +1 650 555 1212 | +16505551212 | 6505551212
PHONE_FORMAT_WEIGHTS = (0.25, 0.25, 0.15, 0.15, 0.20)
PHONE_FORMATS_WITH_CC = (2, 3)
CASE_WEIGHTS = (0.55, 0.25, 0.10, 0.10)  # as is | Capitalized Parts | UPPER | upper domain
WHITESPACE_WEIGHTS = (0.92, 0.03, 0.02, 0.02, 0.01)  # none | " x" | "x " | "x\t" | "  x \t"
TIERS = ("standard", "plus", "premium")
TIER_WEIGHTS = (0.6, 0.3, 0.1)

# Profile-sensitive raw emails: bit flags of how the raw differs from the base.
DOTS, PLUS_TAG, GOOGLEMAIL = 1, 2, 4
SENSITIVE_VARIANTS = (DOTS, PLUS_TAG, GOOGLEMAIL, DOTS | PLUS_TAG, DOTS | GOOGLEMAIL, PLUS_TAG | GOOGLEMAIL)
SENSITIVE_WEIGHTS = (0.30, 0.25, 0.20, 0.10, 0.10, 0.05)
# Which variant bits a hash profile removes (spec table): canonical all, uid2 dots and +tag on
# gmail.com only (so nothing on googlemail.com), google dots on both domains but no +tag and no
# domain mapping (so nothing helps on googlemail.com), basic nothing.


def variant_name(variant: int) -> str:
    parts = [name for bit, name in ((DOTS, "dots"), (PLUS_TAG, "plus_tag"), (GOOGLEMAIL, "googlemail")) if variant & bit]
    return "+".join(parts) or "none"


def email_normalizes_to_base(variant: np.ndarray | int, hash_profile: str) -> np.ndarray:
    """Whether a raw email of this variant normalizes back to the person's base under hash_profile."""
    variant = np.asarray(variant)
    if hash_profile == "canonical":
        return np.ones(variant.shape, dtype=bool)
    if hash_profile == "uid2":
        return (variant & GOOGLEMAIL) == 0
    if hash_profile == "google":
        return (variant & (GOOGLEMAIL | PLUS_TAG)) == 0
    if hash_profile == "basic":
        return variant == 0
    raise ValueError(f"unknown hash profile {hash_profile!r}; use one of {HASH_PROFILES}")


# --- hashing helpers --------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _sm64(x: int) -> int:
    """splitmix64 of a Python int."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _text_key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _mix(key: int, idx: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer over idx, keyed: independent-looking uint64 per (key, index)."""
    with np.errstate(over="ignore"):
        z = idx.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(key)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _coprime_multiplier(key: int, modulus: int, limit: int = 1_000_000) -> int:
    a = key % min(limit, modulus) or 1
    while math.gcd(a, modulus) != 1:
        a += 1
    return a


def _permute(x: np.ndarray, left: int, right: int, key: int, rounds: int = 4) -> np.ndarray:
    """A keyed bijection of [0, left * right) (alternating Feistel rounds on the two digits of
    x in base `right`): distinct inputs give distinct, well-scattered outputs."""
    hi, lo = np.divmod(np.asarray(x, dtype=np.int64), right)
    for r in range(rounds):
        hi = (hi + (_mix(_sm64(key ^ (2 * r)), lo) % np.uint64(left)).astype(np.int64)) % left
        lo = (lo + (_mix(_sm64(key ^ (2 * r + 1)), hi) % np.uint64(right)).astype(np.int64)) % right
    return hi * right + lo


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalized_phone(e164_digits: str, hash_profile: str) -> str:
    """A base phone (E.164 digits, country code first) as hash_profile writes it before hashing."""
    return e164_digits if hash_profile == "basic" else "+" + e164_digits


def partner_hashes(base_email: str | None, base_phone: str | None, hash_profile: str) -> tuple[str | None, str | None]:
    """The email_sha256 / phone_sha256 a partner sends for a person with this base identity.

    The base email is already normalized under every profile, so only the phone differs."""
    return (
        None if base_email is None else sha256_hex(base_email),
        None if base_phone is None else sha256_hex(normalized_phone(base_phone, hash_profile)),
    )


def _sha256_column(values: pa.Array, present: np.ndarray) -> list:
    return [sha256_hex(v) if p else None for v, p in zip(values.to_pylist(), present.tolist())]


def _weighted(u: np.ndarray, weights: tuple[float, ...]) -> np.ndarray:
    cum = np.cumsum(weights)
    return np.minimum(np.searchsorted(cum / cum[-1], u, side="right"), len(weights) - 1)


def _take(values: tuple[str, ...], idx: np.ndarray) -> pa.Array:
    return pa.array(values, pa.string()).take(pa.array(idx, pa.int64()))


def _join(*parts) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


# --- persons ----------------------------------------------------------------------------------


class People:
    """Everything about the persons with the given indices, as arrays (pure function of seed, index)."""

    def __init__(self, seed: int, indices) -> None:
        self.idx = np.asarray(indices, dtype=np.int64)
        if self.idx.size and (self.idx.min() < 0 or self.idx.max() >= UNIVERSE):
            raise ValueError(f"person indices must lie in [0, {UNIVERSE})")
        base = _sm64(seed)

        def h(salt: int) -> np.ndarray:
            return _mix(_sm64(base ^ salt), self.idx)

        def u(salt: int) -> np.ndarray:
            return (h(salt) >> np.uint64(11)).astype(np.float64) * 2.0**-53

        self.first = (h(1) % np.uint64(len(FIRST_NAMES))).astype(np.int64)
        self.last = (h(2) % np.uint64(len(LAST_NAMES))).astype(np.int64)
        self.domain = _weighted(u(3), DOMAIN_WEIGHTS)
        self.gmail = self.domain == 0
        style = (h(4) % np.uint64(4)).astype(np.int64)  # first+last | initial+last | last+first | first
        self.style = np.where(self.gmail & (style == 3), 0, style)
        self.sep = np.where(self.gmail, 0, (h(5) % np.uint64(3)).astype(np.int64))
        self.number = _permute(self.idx, 10**4, 10**4, _sm64(base ^ 101))  # UNIVERSE = 10**8
        self.country = _weighted(u(6), COUNTRY_WEIGHTS)
        self.cc = np.array(COUNTRY_CODES)[self.country]
        # national numbers 2000000000..9999999999, a bijection of the index
        self.national = 2_000_000_000 + _permute(self.idx, 80_000, 100_000, _sm64(base ^ 103))
        fmt = _weighted(u(7), PHONE_FORMAT_WEIGHTS)
        self.phone_format = np.where(self.cc == "1", fmt, np.where(u(8) < 0.5, 2, 3))
        self.phone_null = u(9) < PROFILE_PHONE_NULL_SHARE
        sensitive = self.gmail & (u(10) < SENSITIVE_SHARE_OF_GMAIL)
        self.variant = np.where(sensitive, np.array(SENSITIVE_VARIANTS)[_weighted(u(11), SENSITIVE_WEIGHTS)], 0)
        self.case_mode = _weighted(u(12), CASE_WEIGHTS)
        self.ws_mode = _weighted(u(13), WHITESPACE_WEIGHTS)
        self.tag = (h(14) % np.uint64(len(PLUS_TAGS))).astype(np.int64)
        self.consent_marketing = u(15) < 0.7
        self.u_since = u(16)
        self.u_value = u(17)
        self.tier = _weighted(u(18), TIER_WEIGHTS)

    def __len__(self) -> int:
        return int(self.idx.size)

    def _local_parts(self) -> tuple[pa.Array, pa.Array]:
        first = _take(FIRST_NAMES, self.first)
        last = _take(LAST_NAMES, self.last)
        initial = pc.utf8_slice_codeunits(first, 0, 1)
        empty = pa.array([""] * len(self), pa.string())
        style = pa.array(self.style.astype(np.int8))
        return pc.choose(style, first, initial, last, first), pc.choose(style, last, last, first, empty)

    def base_emails(self) -> pa.Array:
        c1, c2 = self._local_parts()
        return _join(c1, _take(LOCAL_SEPARATORS, self.sep), c2, pc.cast(pa.array(self.number), pa.string()),
                     "@", _take(DOMAINS, self.domain))

    def raw_emails(self) -> pa.Array:
        """The email as the customer typed it: case and whitespace noise, and for the
        profile-sensitive minority gmail dots, a +tag and/or googlemail.com."""
        c1, c2 = self._local_parts()
        capital = pa.array(self.case_mode == 1)
        c1 = pc.if_else(capital, pc.utf8_capitalize(c1), c1)
        c2 = pc.if_else(capital, pc.utf8_capitalize(c2), c2)
        sep = _take(LOCAL_SEPARATORS, np.where(self.variant & DOTS, 1, self.sep))
        tag = pc.if_else(pa.array((self.variant & PLUS_TAG) != 0), _join("+", _take(PLUS_TAGS, self.tag)), "")
        domain = pc.if_else(pa.array((self.variant & GOOGLEMAIL) != 0), "googlemail.com", _take(DOMAINS, self.domain))
        domain = pc.if_else(pa.array(self.case_mode == 3), pc.utf8_upper(domain), domain)
        email = _join(c1, sep, c2, pc.cast(pa.array(self.number), pa.string()), tag, "@", domain)
        email = pc.if_else(pa.array(self.case_mode == 2), pc.utf8_upper(email), email)
        lead = _take(("", " ", "", "", "  "), self.ws_mode)
        trail = _take(("", "", " ", "\t", " \t"), self.ws_mode)
        return _join(lead, email, trail)

    def base_phones(self) -> pa.Array:
        """E.164 digits (country code first, no '+')."""
        return _join(pa.array(self.cc), pc.cast(pa.array(self.national), pa.string()))

    def raw_phones(self) -> pa.Array:
        national = pc.cast(pa.array(self.national), pa.string())
        a = pc.utf8_slice_codeunits(national, 0, 3)
        b = pc.utf8_slice_codeunits(national, 3, 6)
        c = pc.utf8_slice_codeunits(national, 6, 10)
        cc = pa.array(self.cc)
        formats = (
            _join("(", a, ") ", b, "-", c),
            _join(a, "-", b, "-", c),
            _join("+", cc, " ", a, " ", b, " ", c),
            _join("+", cc, national),
            national,
        )
        phone = pc.choose(pa.array(self.phone_format.astype(np.int8)), *formats)
        return pc.if_else(pa.array(self.phone_null), pa.nulls(len(self), pa.string()), phone)

    def email_matches(self, hash_profile: str) -> np.ndarray:
        """Whether the raw profile email normalizes to the base under hash_profile."""
        return email_normalizes_to_base(self.variant, hash_profile)

    def phone_matches(self, default_country_code: str) -> np.ndarray:
        """Whether the raw profile phone normalizes to the base phone with this default country code."""
        has_cc = np.isin(self.phone_format, PHONE_FORMATS_WITH_CC)
        return ~self.phone_null & (has_cc | (self.cc == default_country_code))


def profile_ids(indices) -> pa.Array:
    return _join("p", pc.utf8_lpad(pc.cast(pa.array(np.asarray(indices, dtype=np.int64) + 1), pa.string()), 10, "0"))


def describe_persons(profiles_seed: int, indices) -> pa.Table:
    """Base and raw identities of some persons (for tests and debugging)."""
    people = People(profiles_seed, indices)
    return pa.table({
        "person_index": pa.array(people.idx),
        "profile_id": profile_ids(people.idx),
        "base_email": people.base_emails(),
        "base_phone": people.base_phones(),
        "raw_email": people.raw_emails(),
        "raw_phone": people.raw_phones(),
        "email_variant": pa.array([variant_name(v) for v in people.variant.tolist()], pa.string()),
    })


# --- file writing -----------------------------------------------------------------------------

_NEEDS_QUOTES = r'[",\r\n]'


def _csv_field(arr: pa.Array) -> pa.Array:
    """RFC 4180 quoting where needed; nulls stay null (written as empty fields)."""
    if not pa.types.is_string(arr.type):
        arr = pc.cast(arr, pa.string())
    needs = pc.fill_null(pc.match_substring_regex(arr, _NEEDS_QUOTES), False)
    if not pc.any(needs).as_py():
        return arr
    quoted = _join('"', pc.replace_substring(arr, '"', '""'), '"')
    return pc.if_else(needs, quoted, arr)


def _csv_bytes(columns: list[pa.Array], eol: str) -> bytes:
    if not columns or len(columns[0]) == 0:
        return b""
    fields = [_csv_field(c) for c in columns]
    lines = pc.binary_join_element_wise(*fields, ",", null_handling="replace", null_replacement="")
    lines = _join(lines, eol)
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=len(lines) + 1, offset=lines.offset * 4)
    return memoryview(lines.buffers()[2])[offsets[0]:offsets[-1]].tobytes()


class _DataFile:
    """One data file written in chunks: CSV (optionally gzipped, BOM, CRLF) or Parquet.

    Encoding and compression run on one background thread (Arrow and zlib release the GIL), so
    they overlap with hashing the next chunk; at most one chunk is pending."""

    def __init__(self, path: Path, file_format: str, names: list[str], parquet_schema: pa.Schema | None = None,
                 bom: bool = False, eol: str = "\n") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.format, self.names, self.eol, self.rows = path, file_format, names, eol, 0
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending = None
        if file_format == "parquet":
            self._parquet = pq.ParquetWriter(path, parquet_schema, compression="zstd")
            self._schema = parquet_schema
            return
        self._raw = open(path, "wb")
        self._out = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0, compresslevel=GZIP_LEVEL) \
            if file_format == "csv.gz" else self._raw
        if bom:
            self._out.write("\ufeff".encode())
        self._out.write(_csv_bytes([pa.array([name], pa.string()) for name in names], eol))

    def __enter__(self) -> _DataFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, columns: dict[str, pa.Array]) -> None:
        rows = len(next(iter(columns.values())))
        if rows == 0:
            return
        self.rows += rows
        self._wait()
        self._pending = self._pool.submit(self._write_now, columns)

    def _write_now(self, columns: dict[str, pa.Array]) -> None:
        if self.format == "parquet":
            self._parquet.write_table(pa.table(columns, schema=self._schema))
        else:
            self._out.write(_csv_bytes([columns[name] for name in self.names], self.eol))

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def close(self) -> None:
        if self._pool is None:
            return
        try:
            self._wait()
        finally:
            self._pool.shutdown()
            self._pool = None
            if self.format == "parquet":
                self._parquet.close()
            else:
                if self._out is not self._raw:
                    self._out.close()
                self._raw.close()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 * 1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, sort_keys=True, indent=2) + "\n", encoding="utf-8")


def _fresh_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


# --- profiles ---------------------------------------------------------------------------------

PROFILE_COLUMNS = ("profile_id", "email", "phone", "country", "consent_marketing", "customer_since", "lifetime_value", "tier")
CUSTOMERS_SINCE = dt.date(2012, 1, 1)


def _date_strings(days_since_epoch: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(days_since_epoch.astype("datetime64[D]")), pa.string())


def _bool_strings(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values, pa.bool_()), pa.string())


def generate_profiles(root: Path, bucket: str, snapshot_date, n_profiles: int, seed: int) -> dict:
    """Write profiles/<snapshot_date>/profiles-000.csv.gz and _SUCCESS; return the ground truth."""
    return _generate_profiles(root, bucket, snapshot_date, n_profiles, seed)[0]


def _generate_profiles(root: Path, bucket: str, snapshot_date, n_profiles: int, seed: int) -> tuple[dict, dict[str, np.ndarray]]:
    """generate_profiles, also returning the first-party attributes as written, compactly (one
    entry per profile index): country and tier codes, consent_marketing, customer_since (days
    since the epoch) and lifetime_value (the DOUBLE its written text parses to)."""
    snapshot_date = _as_date(snapshot_date)
    if not 0 <= n_profiles <= MAX_PROFILES:
        raise ValueError(f"n_profiles must lie in [0, {MAX_PROFILES}]")
    prefix = f"profiles/{snapshot_date.isoformat()}/"
    folder = Path(root) / bucket / prefix
    _fresh_dir(folder)
    variants = np.zeros(8, dtype=np.int64)
    phone_null = 0
    sensitive: list[dict] = []
    snapshot_day = (snapshot_date - dt.date(1970, 1, 1)).days
    since_span = (snapshot_date - CUSTOMERS_SINCE).days
    first_party = {
        "country": np.zeros(n_profiles, np.int8), "tier": np.zeros(n_profiles, np.int8),
        "consent_marketing": np.zeros(n_profiles, bool), "customer_since": np.zeros(n_profiles, np.int32),
        "lifetime_value": np.zeros(n_profiles, np.float64),
    }
    with _DataFile(folder / "profiles-000.csv.gz", "csv.gz", list(PROFILE_COLUMNS)) as out:
        for lo in range(0, n_profiles, CHUNK_ROWS):
            hi = min(lo + CHUNK_ROWS, n_profiles)
            people = People(seed, np.arange(lo, hi))
            ids = profile_ids(people.idx)
            since = snapshot_day - np.floor(people.u_since * since_span).astype(np.int64)
            value_text = pc.cast(pa.array(np.round(-np.log1p(-people.u_value) * 400.0, 2)), pa.string())
            out.write({
                "profile_id": ids,
                "email": people.raw_emails(),
                "phone": people.raw_phones(),
                "country": pa.array(np.array(COUNTRIES)[people.country]),
                "consent_marketing": _bool_strings(people.consent_marketing),
                "customer_since": _date_strings(since),
                "lifetime_value": value_text,
                "tier": _take(TIERS, people.tier),
            })
            first_party["country"][lo:hi] = people.country
            first_party["tier"][lo:hi] = people.tier
            first_party["consent_marketing"][lo:hi] = people.consent_marketing
            first_party["customer_since"][lo:hi] = since
            first_party["lifetime_value"][lo:hi] = pc.cast(value_text, pa.float64()).to_numpy()
            variants += np.bincount(people.variant, minlength=8)
            phone_null += int(people.phone_null.sum())
            if len(sensitive) <= LIST_LIMIT:
                for i in np.flatnonzero(people.variant):
                    sensitive.append({"profile_id": ids[int(i)].as_py(), "variant": variant_name(int(people.variant[i]))})
    (folder / "_SUCCESS").write_bytes(b"")
    n_sensitive = int(variants[1:].sum())
    flags = np.arange(8)
    return {
        "bucket": bucket,
        "prefix": prefix,
        "files": [{"key": "profiles-000.csv.gz", "rows": out.rows, "sha256": _file_sha256(out.path)}],
        "n_profiles": n_profiles,
        "snapshot_date": snapshot_date.isoformat(),
        "seed": seed,
        "phone_null": phone_null,
        "profile_sensitive_emails": {
            "total": n_sensitive,
            "by_variant": {variant_name(v): int(variants[v]) for v in SENSITIVE_VARIANTS},
            "not_normalizing_to_base": {hp: int(variants[~email_normalizes_to_base(flags, hp)].sum()) for hp in HASH_PROFILES},
        },
        "sensitive_profiles": sensitive if n_sensitive <= LIST_LIMIT else None,
    }, first_party


# --- partner drops ----------------------------------------------------------------------------


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

    def __post_init__(self) -> None:
        if self.file_format not in FORMATS:
            raise ValueError(f"file_format {self.file_format!r}: use one of {FORMATS}")
        if self.rows < 0 or self.files < 1:
            raise ValueError("rows must be >= 0 and files >= 1")
        if not 0.0 <= self.bad_row_share <= 1.0:
            raise ValueError("bad_row_share must lie in [0, 1]")
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
    pkey = _text_key("partner_person_id/" + spec.effective_partner_id)
    person_number = _permute(people.idx, 10**6, 10**6, pkey)
    cols["partner_person_id"] = _join(f"{prefix}-", pc.utf8_lpad(pc.cast(pa.array(person_number), pa.string()), 12, "0"))

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
    facts = {
        "valid": valid,
        "consented": valid & consent["consent_enrichment"],
        "by_email": valid & email_match,
        "by_phone": valid & ~email_match & phone_match,
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
            by_email, by_phone = facts["by_email"] & mask, facts["by_phone"] & mask
            self.counts[tag + "by_email"] += int(by_email.sum())
            self.counts[tag + "by_phone"] += int(by_phone.sum())
            self.counts[tag + "unmatched"] += int((mask & ~by_email & ~by_phone).sum())
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
        keys = ("by_email", "by_phone", "unmatched")
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


# --- expected enriched_profiles and segment sizes --------------------------------------------

LOADED_STATUSES = ("loaded", "loaded_flagged")


def load_segment_rules(path: Path | None = None) -> dict[str, str]:
    """{segment name: rule} from a segments YAML as dbt reads it (transform.load_segments);
    default the project's own."""
    return {name: segment["rule"] for name, segment in load_segments(path).items()}


def load_segments(path: Path | None = None) -> dict[str, dict]:
    """{segment name: {"rule": ..., "destinations": [...], "description": ...}} (see load_segment_rules)."""
    from partner_pipeline.transform import load_segments as load

    return load(path)


def _expected_enriched(agreements: dict[str, Agreement], run_date: dt.date, n_profiles: int, snapshot_date: dt.date,
                       first_party: dict[str, np.ndarray],
                       drops: list[tuple[dict, dict[str, np.ndarray]]]) -> tuple[pa.Table, dict[str, int], pa.Table]:
    """The enriched_profiles mart the pipeline should build after the run for run_date, from the
    generator's own facts (person indices, row validity, consent flags, attribute values written),
    {partner_id: profiles enriched}, and per partner which profiles its deciding record refuses
    activation for (consent_activation false): activation_refused, a column per partner.

    A partner's values reach a profile from a drop whose expected status is loaded or
    loaded_flagged, dated on or before run_date; the profile's latest matched valid record from
    that partner decides: it must carry the agreement's required consents (consent_enrichment
    always) and its drop must be within retention (drop_date + retention_days > run_date). The
    generator links no ambiguous records (one person per drop, unique base identities; asserted);
    the one way it can is a csv_quirks drop whose partner_person_id carries a suffix, beside
    another drop of the partner naming the same person differently: that profile is then hit by
    two partner persons and, as in the pipeline, linked to nobody."""
    columns: dict[str, pa.Array] = {
        "profile_id": profile_ids(np.arange(n_profiles)),
        "country": pa.DictionaryArray.from_arrays(pa.array(first_party["country"]), pa.array(COUNTRIES)),
        "has_consent_marketing": pa.array(first_party["consent_marketing"]),
        "customer_since": pa.array(first_party["customer_since"]).cast(pa.date32()),
        "lifetime_value": pa.array(first_party["lifetime_value"]),
        "tier": pa.DictionaryArray.from_arrays(pa.array(first_party["tier"]), pa.array(TIERS)),
        "snapshot_date": pa.array(np.full(n_profiles, (snapshot_date - dt.date(1970, 1, 1)).days, np.int32)).cast(pa.date32()),
    }
    enriched_counts: dict[str, int] = {}
    partner_masks: list[np.ndarray] = []
    refused_columns: dict[str, np.ndarray] = {}
    for partner_id, agreement in sorted(agreements.items()):
        counted = sorted(((_as_date(truth["drop_date"]), rows) for truth, rows in drops
                          if truth["partner_id"] == partner_id and truth["expected_status"] in LOADED_STATUSES
                          and _as_date(truth["drop_date"]) <= run_date), key=lambda item: item[0])
        latest = np.full(n_profiles, -1, np.int16)  # which counted drop holds the profile's latest record
        spelling = np.full(n_profiles, -1, np.int8) if len(counted) > 1 else None
        ambiguous = np.zeros(n_profiles, bool) if len(counted) > 1 else None
        for d, (_, rows) in enumerate(counted):
            profile = rows["profile"]
            hit = np.zeros(n_profiles, bool)
            hit[profile] = True
            if int(np.count_nonzero(hit)) != profile.size:
                raise AssertionError(f"{partner_id}: a drop links several records to one profile")
            if spelling is not None:
                before = spelling[profile]
                ambiguous[profile[(before >= 0) & (before != rows["person_id_variant"])]] = True
                spelling[profile] = np.where(before >= 0, before, rows["person_id_variant"])
            latest[profile] = d
        enriched = np.zeros(n_profiles, bool)
        refused = np.zeros(n_profiles, bool)
        values = {name: np.zeros(n_profiles, _compact_dtype(attr)) for name, attr in agreement.attributes.items()}
        for d, (drop_date, rows) in enumerate(counted):
            if drop_date + dt.timedelta(days=agreement.retention_days) <= run_date:
                continue
            keep = rows["consent_enrichment"] & (latest[rows["profile"]] == d)
            if "consent_activation" in agreement.required_consents:
                keep &= rows["consent_activation"]
            if ambiguous is not None:
                keep &= ~ambiguous[rows["profile"]]
            profile = rows["profile"][keep]
            enriched[profile] = True
            refused[profile] = ~rows["consent_activation"][keep]
            for name in values:
                if "attr:" + name in rows:
                    values[name][profile] = rows["attr:" + name][keep]
        for name, attr in sorted(agreement.attributes.items()):
            arr = pa.array(values.pop(name), mask=~enriched)
            if attr.type == "date":
                arr = arr.cast(pa.date32())
            elif attr.type == "string":
                arr = pa.DictionaryArray.from_arrays(arr, pa.array(string_vocabulary(attr), pa.string()))
            columns[f"{partner_id}__{name}"] = arr
        enriched_counts[partner_id] = int(np.count_nonzero(enriched))
        partner_masks.append(enriched)
        refused_columns[partner_id] = refused
    columns["enriched_by_partners"] = _partner_lists(sorted(agreements), partner_masks, n_profiles)
    return pa.table(columns), enriched_counts, pa.table(refused_columns or {"_none": np.zeros(n_profiles, bool)})


def _partner_lists(partner_ids: list[str], masks: list[np.ndarray], n_profiles: int) -> pa.Array:
    """enriched_by_partners: per profile the sorted ids of the partners enriching it."""
    names = pa.array(partner_ids, pa.string())
    if not masks:
        return pa.ListArray.from_arrays(pa.array(np.zeros(n_profiles + 1, np.int32)), pa.array([], pa.string()))
    matrix = np.stack(masks, axis=1)  # n_profiles x partners, row-major: partners of a profile in order
    offsets = np.zeros(n_profiles + 1, np.int64)
    np.cumsum(matrix.sum(axis=1), out=offsets[1:])
    codes = np.tile(np.arange(len(partner_ids), dtype=np.int16), n_profiles)[matrix.ravel()]
    values = pa.DictionaryArray.from_arrays(pa.array(codes), names)
    if offsets[-1] < 2**31:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
    return pa.LargeListArray.from_arrays(pa.array(offsets), values)


def _segment_sizes(enriched_profiles: pa.Table, rules: dict[str, str], activation_refused: pa.Table) -> tuple[dict[str, int], dict[str, int]]:
    """{segment: members} and {segment: members that may be sent}: each rule evaluated by DuckDB over
    the expected enriched_profiles; a member may be sent with first-party marketing consent, unless a
    partner the rule names (by its `<partner>__` column prefix) refused activation for them."""
    import duckdb

    from partner_pipeline.settings import load_settings

    sizes, sendable = {}, {}
    with duckdb.connect(config=load_settings().duckdb_config()) as con:
        con.register("enriched_profiles", enriched_profiles)
        con.register("activation_refused", activation_refused)
        for name, rule in sorted(rules.items()):
            partners = sorted({p for p in re.findall(r"\b([a-z0-9_]{2,40})__[a-z]", rule) if p in activation_refused.column_names})
            allowed = " AND ".join(["has_consent_marketing", *(f'NOT r."{p}"' for p in partners)])
            try:
                sizes[name], sendable[name] = (int(v) for v in con.execute(
                    f"""SELECT count(*), count(*) FILTER (WHERE {allowed})
                        FROM enriched_profiles POSITIONAL JOIN activation_refused AS r WHERE {rule}\n""").fetchone())
            except duckdb.Error as exc:
                raise ValueError(f"segment {name}: its rule does not run over enriched_profiles ({rule!r}): {exc}") from exc
    return sizes, sendable


# --- scenario, upload, CLI --------------------------------------------------------------------


def _as_date(value) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


def generate_scenario(root: Path, *, landing_bucket: str, first_party_bucket: str, agreements: dict[str, Agreement],
                      drop_date, n_profiles: int, rows_per_partner: int, seed: int = 42, bad_row_share: float = 0.02,
                      file_format: str = "csv.gz", files: int = 1, extra_drops: tuple[DropSpec, ...] = (),
                      segments_yml: Path | None = None) -> dict:
    """A profile snapshot dated drop_date, one drop per agreement valid on drop_date (plus any
    extra_drops), and <root>/ground_truth.json describing all of it.

    Beside profiles and drops the ground truth holds `expected_enriched` ({partner_id: profiles
    that partner enriches}) and `segments` ({segment: members}, every rule of segments_yml, by
    default the dbt project's segments YAML, evaluated over the expected enriched_profiles of
    the run for drop_date; see _expected_enriched)."""
    root = Path(root)
    drop_date = _as_date(drop_date)
    rules = load_segment_rules(segments_yml)  # before writing anything: a bad YAML fails fast
    profiles, first_party = _generate_profiles(root, first_party_bucket, drop_date, n_profiles, seed)
    specs = [DropSpec(a, drop_date, rows_per_partner, file_format, files, bad_row_share)
             for _, a in sorted(agreements.items()) if a.is_valid_on(drop_date)]
    drops, matched = {}, []
    for spec in [*specs, *extra_drops]:
        name = spec.prefix.rstrip("/")
        if name in drops:
            raise ValueError(f"two drops for {name}; give extra drops another partner_id or drop_date")
        drops[name], rows = _write_drop(root, landing_bucket, spec, seed, n_profiles, seed)
        matched.append((drops[name], rows))
    enriched_profiles, enriched, refused = _expected_enriched(agreements, drop_date, n_profiles, drop_date, first_party, matched)
    del matched, first_party
    segments, sendable = _segment_sizes(enriched_profiles, rules, refused)
    del enriched_profiles
    truth = {
        "generator": "partner_pipeline.synth",
        "seed": seed,
        "drop_date": drop_date.isoformat(),
        "buckets": {"landing": landing_bucket, "first_party": first_party_bucket},
        "profiles": profiles,
        "drops": drops,
        "expected_enriched": enriched,
        "segments": segments,
        "sendable": sendable,
    }
    _write_json(root / "ground_truth.json", truth)
    return truth


def upload_tree(client, root: Path) -> int:
    """Upload every <root>/<bucket>/<key> file (files directly under root, such as
    ground_truth.json, are skipped), creating missing buckets, and return the count.

    Every data file and manifest goes up before any _SUCCESS marker, so a folder that has a
    _SUCCESS gets it last and no drop looks complete while any object is still missing."""
    from partner_pipeline.storage import ensure_buckets

    root = Path(root)
    paths = [p for p in sorted(root.rglob("*")) if p.is_file() and len(p.relative_to(root).parts) >= 2]
    paths.sort(key=lambda p: (p.name == "_SUCCESS", str(p.parent), p.name == "manifest.json", p.name))
    ensure_buckets(client, sorted({p.relative_to(root).parts[0] for p in paths}))
    for path in paths:
        bucket, *key = path.relative_to(root).parts
        client.upload_file(str(path), bucket, "/".join(key))
    return len(paths)


def main(argv: list[str] | None = None) -> int:
    from partner_pipeline.agreements import load_agreements
    from partner_pipeline.settings import load_settings

    settings = load_settings()
    parser = argparse.ArgumentParser(prog="python -m partner_pipeline.synth", description=(
        "Write deterministic synthetic first-party profiles and one partner drop per agreement valid on --date "
        "into OUT/<bucket>/<key>, with OUT/ground_truth.json; optionally upload them to S3."))
    parser.add_argument("--out", type=Path, required=True, help="local output directory (mirrors object storage)")
    parser.add_argument("--date", type=dt.date.fromisoformat, required=True, help="drop date and profile snapshot date, YYYY-MM-DD")
    parser.add_argument("--profiles", type=int, required=True, help="number of first-party profiles")
    parser.add_argument("--rows", type=int, required=True, help="rows per partner drop")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bad-row-share", type=float, default=0.02, help="share of rows made invalid (default 0.02)")
    parser.add_argument("--format", choices=FORMATS, default="csv.gz", dest="file_format")
    parser.add_argument("--files", type=int, default=1, help="data files per drop")
    parser.add_argument("--agreements-dir", type=Path, default=settings.agreements_dir)
    parser.add_argument("--segments-yml", type=Path, default=None,
                        help="dbt segments YAML whose rules the ground truth sizes (default: the project's)")
    parser.add_argument("--upload", action="store_true",
                        help="upload to the S3 endpoint and buckets from the PIPELINE_* / AWS_* environment")
    args = parser.parse_args(argv)

    started = time.monotonic()
    truth = generate_scenario(
        args.out, landing_bucket=settings.landing_bucket, first_party_bucket=settings.first_party_bucket,
        agreements=load_agreements(args.agreements_dir), drop_date=args.date, n_profiles=args.profiles,
        rows_per_partner=args.rows, seed=args.seed, bad_row_share=args.bad_row_share,
        file_format=args.file_format, files=args.files, segments_yml=args.segments_yml,
    )
    drops = "; ".join(
        f"{name}: {d['rows_total']} rows, {d['rows_invalid']} invalid, "
        f"{d['expected_matches']['by_email'] + d['expected_matches']['by_phone']} expected matches"
        for name, d in truth["drops"].items()
    ) or "none (no agreement valid on that date)"
    summary = (
        f"Wrote {args.profiles} first-party profiles (snapshot {args.date}, "
        f"{truth['profiles']['profile_sensitive_emails']['total']} profile-sensitive emails) and "
        f"{len(truth['drops'])} partner drops as {args.file_format} ({drops}) under {args.out} in "
        f"{time.monotonic() - started:.1f}s; ground truth in {args.out / 'ground_truth.json'} "
        f"(expected segment sizes: {', '.join(f'{k} {v}' for k, v in truth['segments'].items()) or 'no segments'})."
    )
    if args.upload:
        from partner_pipeline.storage import client_from_settings

        uploaded = upload_tree(client_from_settings(settings), args.out)
        summary += f" Uploaded {uploaded} objects to {settings.s3_endpoint_url or 'AWS S3'}."
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
