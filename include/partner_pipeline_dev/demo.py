"""`make demo`: the nightly job on embedded defaults, start to finish, on synthetic partner drops.

Starts a SeaweedFS S3 server on loopback (store under data/s3), generates first-party profiles
and one drop per partner agreement (plus a drop from a partner without an agreement and one
still arriving), runs the nightly DAG with `airflow dags test`, prints what it did and checks it
against the generator's ground truth. Running it again re-delivers the same bytes: every drop is
recognised as unchanged and skipped, and the warehouse ends in the same state.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

import duckdb

from partner_pipeline.agreements import load_agreements
from partner_pipeline.governance import load_governance
from partner_pipeline.settings import load_settings
from partner_pipeline.storage import client_from_settings
from partner_pipeline_dev import synth
from partner_pipeline_dev.run import report, run_night
from partner_pipeline_dev.services import embedded_services
from partner_pipeline_dev.synth.truth import expected_prospect_audience, expected_prospects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--date", type=dt.date.fromisoformat, default=dt.date(2026, 11, 21), help="business date D of the drops")
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=5_000, help="rows per partner drop")
    args = parser.parse_args(argv)

    settings = load_settings()
    agreements = load_agreements(settings.agreements_dir)
    with embedded_services(settings) as env:
        truth = _generate(settings, agreements, args)
        uploaded = synth.upload_tree(client_from_settings(load_settings()), settings.data_dir / "synth")
        print(f"uploaded {uploaded} objects")
        code, log = run_night(settings, args.date, env)
    return code or report(settings, args.date, log, truth) or _report_prospects(settings, agreements, args)


def _report_prospects(settings, agreements, args) -> int:
    """Print each prospect audience sent (activation_syncs of the published copy) beside the generator's
    ground truth (truth.expected_prospect_audience over the partner's drop); 1 on a mismatch."""
    governance = load_governance(settings.governance_dir, agreements)
    mismatches = []
    print("\nProspect audiences (prospect_segment_membership -> activation):")
    with duckdb.connect(str(settings.published_path), read_only=True) as con:
        for name, segment in sorted(synth.load_segments(kind="prospect").items()):
            partner_id = next(p for p in sorted(agreements) if f"{p}__" in segment["rule"])
            agreement = agreements[partner_id]
            spec = synth.DropSpec(agreement, args.date, args.rows, bad_row_share=0.02)  # as _generate wrote it
            prospects = expected_prospects(spec, 42, args.profiles, 42)
            for destination_id in segment["destinations"]:
                destination = governance.destinations[destination_id]
                same = (destination.hash_profile, destination.default_country_code) == (agreement.hash_profile,
                                                                                        agreement.default_country_code)
                audience = expected_prospect_audience(prospects, segment["rule"], same)
                expected = len(audience) if len(audience) >= destination.min_audience_size else 0
                held = con.execute("SELECT members_held FROM activation_syncs WHERE destination_id = ? AND segment_name = ?",
                                   [destination_id, name]).fetchone()
                held = held[0] if held else 0
                print(f"  {name:<26}{destination_id:<22}{held:>7} prospects of {partner_id} sent  (ground truth {expected}, "
                      f"of {prospects.num_rows} prospects; min_audience_size {destination.min_audience_size})")
                if held != expected:
                    mismatches.append(f"{name} -> {destination_id}: holds {held}, ground truth {expected}")
    if mismatches:
        print("\nGROUND TRUTH MISMATCH:\n  " + "\n  ".join(mismatches), file=sys.stderr)
        return 1
    return 0


def _generate(settings, agreements, args) -> dict:
    any_agreement = next(iter(agreements.values()))
    # Beside one drop per agreement: a partner with no agreement (quarantined) and a drop still arriving.
    extra = tuple(synth.DropSpec(agreement=any_agreement, drop_date=args.date, rows=200, partner_id=partner_id, corruption=corruption)
                  for partner_id, corruption in (("initech_media", None), ("hooli_data", "missing_success")))
    return synth.generate_scenario(
        settings.data_dir / "synth", landing_bucket=settings.landing_bucket, first_party_bucket=settings.first_party_bucket,
        agreements=agreements, drop_date=args.date, n_profiles=args.profiles, rows_per_partner=args.rows, seed=42,
        extra_drops=extra)


if __name__ == "__main__":
    sys.exit(main())
