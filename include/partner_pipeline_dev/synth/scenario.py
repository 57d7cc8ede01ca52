"""A whole scenario: a profile snapshot, one drop per valid agreement (plus extra drops) and
<root>/ground_truth.json describing all of it."""

from __future__ import annotations

from pathlib import Path

from partner_pipeline.agreements import Agreement
from partner_pipeline_dev.synth.drops import DropSpec, _write_drop
from partner_pipeline_dev.synth.files import _write_json
from partner_pipeline_dev.synth.identities import _as_date
from partner_pipeline_dev.synth.profiles import _generate_profiles
from partner_pipeline_dev.synth.truth import _expected_enriched, _segment_sizes, load_segment_rules


def generate_scenario(root: Path, *, landing_bucket: str, first_party_bucket: str, agreements: dict[str, Agreement],
                      drop_date, n_profiles: int, rows_per_partner: int, seed: int = 42, bad_row_share: float = 0.02,
                      file_format: str = "csv.gz", files: int = 1, extra_drops: tuple[DropSpec, ...] = (),
                      segments_yml: Path | None = None, ambiguous_share: float = 0.0) -> dict:
    """A profile snapshot dated drop_date, one drop per agreement valid on drop_date (plus any
    extra_drops), and <root>/ground_truth.json describing all of it. ambiguous_share: see DropSpec.

    Beside profiles and drops the ground truth holds `expected_enriched` ({partner_id: profiles
    that partner enriches}) and `segments` ({segment: members}, every rule of segments_yml, by
    default the dbt project's segments YAML, evaluated over the expected enriched_profiles of
    the run for drop_date; see _expected_enriched)."""
    root = Path(root)
    drop_date = _as_date(drop_date)
    rules = load_segment_rules(segments_yml)  # before writing anything: a bad YAML fails fast
    profiles, first_party = _generate_profiles(root, first_party_bucket, drop_date, n_profiles, seed)
    specs = [DropSpec(a, drop_date, rows_per_partner, file_format, files, bad_row_share, ambiguous_share=ambiguous_share)
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
        "generator": "partner_pipeline_dev.synth",
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
