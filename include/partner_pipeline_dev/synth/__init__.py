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

Modules, by job
---------------
identities  who each person index is, the partners' hashes of them
files       writing CSV / gzip / Parquet / JSON deterministically
profiles    the first-party profile snapshot
drops       partner drops (DropSpec, corruptions, bad rows) and each drop's ground truth
truth       the expected enriched_profiles mart, segment sizes and seed sets (expected_seed_set)
scenario    generate_scenario: all of the above and ground_truth.json
seeded      a partner's seed-keyed drop answering the seed set we sent it (spec v2), with ground truth
cli         `python -m partner_pipeline_dev.synth`
"""

from partner_pipeline_dev.synth.drops import (
    CONTRACT_RULES, CORRUPTIONS, CSV_ONLY_RULES, FORMATS, LOADABLE_CORRUPTIONS, UNLISTED_FILE_ROWS, DropSpec, drop_columns,
    expected_status, row_rules, string_vocabulary, write_drop,
)
from partner_pipeline_dev.synth.identities import (
    DOTS, GOOGLEMAIL, PLUS_TAG, UNIVERSE, People, describe_persons, email_normalizes_to_base, normalized_phone, partner_hashes,
    profile_ids, sha256_hex, variant_name,
)
from partner_pipeline_dev.synth.profiles import PROFILE_COLUMNS, generate_profiles
from partner_pipeline_dev.synth.scenario import generate_scenario
from partner_pipeline_dev.synth.truth import LOADED_STATUSES, expected_seed_set, load_segment_rules, load_segments
from partner_pipeline_dev.upload import upload_tree

__all__ = [
    "CONTRACT_RULES", "CORRUPTIONS", "CSV_ONLY_RULES", "DOTS", "FORMATS", "GOOGLEMAIL", "LOADABLE_CORRUPTIONS", "LOADED_STATUSES",
    "PLUS_TAG", "PROFILE_COLUMNS", "UNIVERSE", "UNLISTED_FILE_ROWS", "DropSpec", "People", "describe_persons", "drop_columns",
    "email_normalizes_to_base", "expected_seed_set", "expected_status", "generate_profiles", "generate_scenario", "load_segment_rules", "load_segments",
    "normalized_phone", "partner_hashes", "profile_ids", "row_rules", "sha256_hex", "string_vocabulary", "upload_tree",
    "variant_name", "write_drop",
]
