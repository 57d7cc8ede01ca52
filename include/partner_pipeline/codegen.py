"""Files generated from the agreements (`make generate`), committed so reviews show their diff:

- expectations/<partner_id>__records.json: the Great Expectations suite of a partner's drops;
- dbt_project/models/marts/_enriched_profiles__models.yml: the docs of enriched_profiles, whose
  partner columns, types and usage labels come from the agreements.

tests/test_codegen.py fails when a committed file is stale.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from partner_pipeline.agreements import Agreement
from partner_pipeline.settings import PROJECT_ROOT
from partner_pipeline.validation import suite_json

ENRICHED_PROFILES_YML = PROJECT_ROOT / "dbt_project" / "models" / "marts" / "_enriched_profiles__models.yml"
FIRST_PARTY_COLUMNS = [
    {"name": "profile_id", "description": "Our customer id.", "data_tests": ["unique", "not_null"]},
    {"name": "country", "description": "ISO 3166 alpha-2."},
    {"name": "has_consent_marketing", "description": "The customer agreed to marketing by us (first-party consent)."},
    {"name": "has_consent_partner_sharing",
     "description": "The customer agreed that their hashed identifiers may be shared with contracted partners for "
                    "matching (seed sets); false when the snapshot has no such column."},
    {"name": "customer_since", "description": "First-party attribute."},
    {"name": "lifetime_value", "description": "First-party attribute."},
    {"name": "tier", "description": "First-party attribute: our own customer tier."},
    {"name": "snapshot_date", "description": "The first-party snapshot these columns come from."},
]


def enriched_profiles_yml(agreements: dict[str, Agreement]) -> str:
    columns = list(FIRST_PARTY_COLUMNS)
    for agreement in sorted(agreements.values(), key=lambda a: a.partner_id):
        for name, attr in agreement.attributes.items():
            detail = attr.description or name.replace("_", " ")
            allowed = (f" Allowed: {', '.join(attr.allowed_values)}." if attr.allowed_values else
                       f" Range: {attr.min if attr.min is not None else '-inf'} to {attr.max if attr.max is not None else 'inf'}."
                       if attr.min is not None or attr.max is not None else "")
            columns.append({
                "name": f"{agreement.partner_id}__{name}",
                "description": f"Partner attribute from {agreement.partner_id} (agreement {agreement.agreement_id}): {detail}.{allowed}",
                "meta": {"source": "partner", "partner_id": agreement.partner_id, "attribute": name,
                         "attribute_type": attr.type, "usage_labels": list(attr.usage_labels),
                         "special_category": attr.special_category, "contains_pii": True},
            })
    columns.append({"name": "enriched_by_partners", "description": "The partners whose data currently enriches this profile."})
    doc = {"version": 2, "models": [{
        "name": "enriched_profiles",
        "description": ("One row per profile: our first-party attributes (no raw email or phone) beside every partner "
                        "attribute, named <partner_id>__<attribute>. Partner columns carry their usage labels in meta."),
        "columns": columns,
    }]}
    header = "# Generated from include/agreements by `make generate`; do not edit by hand.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, width=120)


def generated_files(agreements: dict[str, Agreement], expectations_dir: Path) -> dict[Path, str]:
    files = {expectations_dir / f"{a.partner_id}__records.json": suite_json(a) for a in agreements.values()}
    files[ENRICHED_PROFILES_YML] = enriched_profiles_yml(agreements)
    return files


def main() -> None:
    from partner_pipeline.agreements import load_agreements
    from partner_pipeline.settings import load_settings
    from partner_pipeline.validation import _quiet_gx

    _quiet_gx()
    settings = load_settings()
    for path, text in generated_files(load_agreements(settings.agreements_dir), settings.expectations_dir).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path}")


if __name__ == "__main__":
    main()
