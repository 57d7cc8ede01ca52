"""Synthetic persons: who each person index is (names, base email and phone, how a customer typed
them) and the partners' hashes of them; pure functions of (profiles_seed, index). See the package docstring."""

from __future__ import annotations

import datetime as dt
import hashlib
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from partner_pipeline.agreements import HASH_PROFILES

CHUNK_ROWS = 500_000  # rows generated and written at a time (bounds memory)
UNIVERSE = 100_000_000  # person indices: [0, n_profiles) customers, [n_profiles, UNIVERSE) strangers
MAX_PROFILES = 50_000_000
LIST_LIMIT = 10_000  # ground truth lists row-level detail up to this many items
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
CONSENT_PARTNER_SHARING_SHARE = 0.4

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


def _as_date(value) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


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
        self.consent_partner_sharing = u(19) < CONSENT_PARTNER_SHARING_SHARE  # v2: who may be in a partner's seed set

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

    def normalized_emails(self, hash_profile: str) -> pa.Array:
        """The raw email as hash_profile normalizes it: case and whitespace gone, and of the variant bits
        those the profile does not remove (email_normalizes_to_base's table) kept; the base where it removes all."""
        kept = np.where(self.email_matches(hash_profile), 0, self.variant)
        if hash_profile == "google":  # dots go on both domains; +tag and googlemail.com stay
            kept = kept & ~DOTS
        c1, c2 = self._local_parts()
        sep = _take(LOCAL_SEPARATORS, np.where(kept & DOTS, 1, self.sep))
        tag = pc.if_else(pa.array((kept & PLUS_TAG) != 0), _join("+", _take(PLUS_TAGS, self.tag)), "")
        domain = pc.if_else(pa.array((kept & GOOGLEMAIL) != 0), "googlemail.com", _take(DOMAINS, self.domain))
        return _join(c1, sep, c2, pc.cast(pa.array(self.number), pa.string()), tag, "@", domain)

    def normalized_phones(self, hash_profile: str, default_country_code: str) -> pa.Array:
        """The raw phone as hash_profile normalizes it with this default country code (null where there is none):
        its own country code where written, else the default one, before the national number."""
        has_cc = np.isin(self.phone_format, PHONE_FORMATS_WITH_CC)
        e164 = _join(pa.array(np.where(has_cc, self.cc, default_country_code)), pc.cast(pa.array(self.national), pa.string()))
        written = e164 if hash_profile == "basic" else _join("+", e164)
        return pc.if_else(pa.array(self.phone_null), pa.nulls(len(self), pa.string()), written)

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
