"""The first-party profile snapshot: profiles/<date>/profiles-000.csv.gz and _SUCCESS, with its ground truth."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from partner_pipeline.agreements import HASH_PROFILES
from partner_pipeline_dev.synth.files import _DataFile, _bool_strings, _file_sha256, _fresh_dir
from partner_pipeline_dev.synth.identities import (CHUNK_ROWS, COUNTRIES, LIST_LIMIT, MAX_PROFILES, SENSITIVE_VARIANTS, TIERS, People,
                                                  _as_date, _take, email_normalizes_to_base, profile_ids, variant_name)

PROFILE_COLUMNS = ("profile_id", "email", "phone", "country", "consent_marketing", "consent_partner_sharing", "customer_since",
                   "lifetime_value", "tier")
CUSTOMERS_SINCE = dt.date(2012, 1, 1)


def _date_strings(days_since_epoch: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(days_since_epoch.astype("datetime64[D]")), pa.string())


def generate_profiles(root: Path, bucket: str, snapshot_date, n_profiles: int, seed: int) -> dict:
    """Write profiles/<snapshot_date>/profiles-000.csv.gz and _SUCCESS; return the ground truth."""
    return _generate_profiles(root, bucket, snapshot_date, n_profiles, seed)[0]


def _generate_profiles(root: Path, bucket: str, snapshot_date, n_profiles: int, seed: int) -> tuple[dict, dict[str, np.ndarray]]:
    """generate_profiles, also returning the first-party attributes as written, compactly (one
    entry per profile index): country and tier codes, consent_marketing, consent_partner_sharing, customer_since (days
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
        "consent_marketing": np.zeros(n_profiles, bool), "consent_partner_sharing": np.zeros(n_profiles, bool),
        "customer_since": np.zeros(n_profiles, np.int32),
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
                "consent_partner_sharing": _bool_strings(people.consent_partner_sharing),
                "customer_since": _date_strings(since),
                "lifetime_value": value_text,
                "tier": _take(TIERS, people.tier),
            })
            first_party["country"][lo:hi] = people.country
            first_party["tier"][lo:hi] = people.tier
            first_party["consent_marketing"][lo:hi] = people.consent_marketing
            first_party["consent_partner_sharing"][lo:hi] = people.consent_partner_sharing
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
