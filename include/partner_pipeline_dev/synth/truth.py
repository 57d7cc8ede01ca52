"""The scenario's expected results beyond each drop: the enriched_profiles mart the pipeline should
build, every segment's size, and each seed-enabled agreement's seed set, from the generator's own
facts (never by re-hashing what the pipeline wrote)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from partner_pipeline.agreements import Agreement
from partner_pipeline.settings import PROJECT_ROOT
from partner_pipeline_dev.synth.drops import _compact_dtype, string_vocabulary
from partner_pipeline_dev.synth.identities import CHUNK_ROWS, COUNTRIES, TIERS, People, _as_date, profile_ids, sha256_hex

LOADED_STATUSES = ("loaded", "loaded_flagged")


# the segments: a list under config.meta.segments of the model segment_membership (dbt's macro
# declared_segments() checks them at build; the generator only reads them)
SEGMENTS_YML = PROJECT_ROOT / "dbt_project" / "models" / "marts" / "_segments.yml"


def load_segment_rules(path: Path | None = None) -> dict[str, str]:
    """{segment name: rule} from a segments YAML laid out as the dbt project's; default the project's own."""
    return {name: segment["rule"] for name, segment in load_segments(path).items()}


def load_segments(path: Path | None = None, kind: str = "customer") -> dict[str, dict]:
    """{segment name: {"rule", "destinations", "description"}} of one kind (customer: over our profiles;
    prospect: over a partner's prospects) from a segments YAML laid out as the dbt project's (default
    SEGMENTS_YML); refuses what dbt's declared_segments() refuses, so a test scenario never expects
    what the build would not run."""
    import yaml

    path = Path(path or SEGMENTS_YML)
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    model = next((m for m in document.get("models") or [] if m.get("name") == "segment_membership"), None)
    if model is None:
        raise ValueError(f"{path}: no model segment_membership, whose config.meta.segments lists the segments")
    entries = {**(model.get("meta") or {}), **((model.get("config") or {}).get("meta") or {})}.get("segments") or []
    segments: dict[str, dict] = {}
    for number, entry in enumerate(entries, start=1):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
            raise ValueError(f"{path}: segment #{number}: name must be lower-case letters, digits and _ (got {name!r})")
        if name in segments:
            raise ValueError(f"{path}: segment {name} is declared twice")
        if not isinstance(entry.get("rule"), str) or not entry["rule"].strip():
            raise ValueError(f"{path}: segment {name} needs a rule (a SQL condition over enriched_profiles)")
        if entry.get("kind", "customer") not in ("customer", "prospect"):
            raise ValueError(f"{path}: segment {name}: kind must be customer or prospect")
        segments[name] = {"rule": entry["rule"].strip(), "destinations": [str(d) for d in entry.get("destinations") or []],
                          "description": str(entry.get("description") or ""), "kind": entry.get("kind", "customer")}
    return {name: segment for name, segment in segments.items() if segment["kind"] == kind}


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
        "has_consent_partner_sharing": pa.array(first_party["consent_partner_sharing"]),
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


def expected_seed_set(agreement: Agreement, profiles_seed: int, n_profiles: int, exclude_profile_ids=()) -> pa.Table:
    """The seed set the pipeline should send under `agreement` for a snapshot of n_profiles made with
    profiles_seed (spec "Seed sets we send"), from the generator's facts: the profiles whose
    consent_partner_sharing is true (less exclude_profile_ids, e.g. the erased), each with its email and
    phone as the agreement's hash profile normalizes them, hashed (People.normalized_emails / normalized_phones);
    a profile with neither is left out. Columns profile_id, email_sha256, phone_sha256, sorted by profile_id.
    The seed_ids are not here: they need the agreement's key."""
    parts = []
    for lo in range(0, n_profiles, CHUNK_ROWS):
        people = People(profiles_seed, np.arange(lo, min(lo + CHUNK_ROWS, n_profiles)))
        keep = people.consent_partner_sharing
        emails = people.normalized_emails(agreement.hash_profile).filter(pa.array(keep)).to_pylist()
        phones = people.normalized_phones(agreement.hash_profile, agreement.default_country_code).filter(pa.array(keep)).to_pylist()
        parts.append(pa.table({
            "profile_id": profile_ids(people.idx[keep]),
            "email_sha256": pa.array([None if e is None else sha256_hex(e) for e in emails], pa.string()),
            "phone_sha256": pa.array([None if p is None else sha256_hex(p) for p in phones], pa.string()),
        }))
    table = pa.concat_tables(parts) if parts else pa.table({"profile_id": pa.array([], pa.string()),
                                                           "email_sha256": pa.array([], pa.string()),
                                                           "phone_sha256": pa.array([], pa.string())})
    excluded = pa.array(sorted(set(exclude_profile_ids)), pa.string())
    table = table.filter(pc.invert(pc.is_in(table["profile_id"], excluded)))
    table = table.filter(pc.invert(pc.and_(pc.is_null(table["email_sha256"]), pc.is_null(table["phone_sha256"]))))
    return table.sort_by("profile_id")


def expected_prospects(spec, profiles_seed: int, n_profiles: int, seed: int) -> pa.Table:
    """The prospects one partner drop (the only drop of its partner) should give prospect_profiles:
    the rows the generator wrote valid, matching no profile (neither by_email, by_phone nor ambiguous), with
    consent_enrichment and consent_activation: person (the generator's person index),
    partner_person_id, email_sha256, phone_sha256 and the attributes the agreement labels
    prospecting, as <partner_id>__<attribute>. Replays the drop's own generation (the plan, chunks
    and seeds write_drop used), so nothing is re-hashed or re-validated here."""
    from partner_pipeline_dev.synth.drops import _drop_chunk, _DropPlan
    from partner_pipeline_dev.synth.identities import CHUNK_ROWS

    agreement = spec.agreement
    labelled = sorted(name for name, attr in agreement.attributes.items() if "prospecting" in attr.usage_labels)
    plan = _DropPlan(spec, n_profiles, seed)
    parts = []
    for _, start, stop, listed in plan.files:
        for lo in range(start, stop, CHUNK_ROWS) if listed else ():
            cols, facts = _drop_chunk(plan, lo, min(lo + CHUNK_ROWS, stop), plan.chunk_rng(seed, lo), profiles_seed, n_profiles)
            keep = (facts["valid"] & ~facts["by_email"] & ~facts["by_phone"] & ~facts["ambiguous"]
                    & facts["consent_enrichment"] & facts["consent_activation"])
            mask = pa.array(keep)
            columns = {"person": pa.array(facts["person"][keep]), "partner_person_id": cols["partner_person_id"].filter(mask),
                       "email_sha256": cols["email_sha256"].filter(mask), "phone_sha256": cols["phone_sha256"].filter(mask)}
            for name in labelled:
                columns[f"{agreement.partner_id}__{name}"] = facts["attributes"][name].filter(mask)
            parts.append(pa.table(columns))
    return pa.concat_tables(parts) if parts else pa.table({"person": pa.array([], pa.int64())})


def expected_prospect_audience(prospects: pa.Table, rule: str, same_hash_profile: bool = True) -> set[tuple]:
    """(partner_person_id, email_sha256, phone_sha256) of the expected_prospects a prospect segment's rule
    selects; the hashes only for a destination under the partner's own hash profile."""
    import duckdb

    if prospects.num_rows == 0:
        return set()
    rows = duckdb.sql(f"SELECT partner_person_id, email_sha256, phone_sha256 FROM prospects WHERE ({rule})").fetchall()
    return {(person, email if same_hash_profile else None, phone if same_hash_profile else None) for person, email, phone in rows}
