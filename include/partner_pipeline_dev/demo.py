"""`make demo`: the nightly job on embedded defaults, start to finish, on synthetic partner drops.

Starts a SeaweedFS S3 server on loopback (store under data/s3), generates first-party profiles
and one drop per partner agreement (plus a drop from a partner without an agreement and one
still arriving), runs the nightly DAG with `airflow dags test`, prints what it did and checks it
against the generator's ground truth, prospect audiences included. The night sends each seed-set
agreement its seed set; a second night (the next date) has that partner answer it as a partner
would (synth.seeded, from the objects in its outbox): rows keyed by our seeds, matched by seed and
reconciled in the scorecard, checked against the generator's ground truth too. Running it again
re-delivers the same bytes: every drop is recognised as unchanged and skipped, and the warehouse
ends in the same state.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path


from partner_pipeline.agreements import load_agreements
from partner_pipeline.governance import load_governance
from partner_pipeline.settings import load_settings
from partner_pipeline.run_report import seed_exports
from partner_pipeline.transform import published_marts
from partner_pipeline.storage import client_from_settings, download_with_sha256, list_objects
from partner_pipeline.warehouse import warehouse
from partner_pipeline_dev import synth
from partner_pipeline_dev.run import report, run_night
from partner_pipeline_dev.services import embedded_services
from partner_pipeline_dev.synth.seeded import SeededDropSpec, write_seeded_drop
from partner_pipeline_dev.synth.truth import expected_prospect_audience, expected_prospects

PROFILES_SEED = 42  # _generate's seed: the partners' universes and our profiles are drawn from it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--date", type=dt.date.fromisoformat, default=dt.date(2026, 11, 21), help="business date D of the drops")
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=5_000, help="rows per partner drop")
    args = parser.parse_args(argv)

    settings = load_settings()
    agreements = load_agreements(settings.agreements_dir)
    with embedded_services(settings) as env:
        settings = load_settings()  # with the embedded services' endpoint and keys, which the lake's reader needs too
        truth = _generate(settings, agreements, args)
        client = client_from_settings(settings)
        print(f"uploaded {synth.upload_tree(client, settings.data_dir / 'synth')} objects")
        code, log = run_night(settings, args.date, env)
        code = code or report(settings, args.date, log, truth) or _report_prospects(settings, agreements, args)
        if code:
            return code
        answer_day = args.date + dt.timedelta(days=1)
        print(f"\n--- the next night, {answer_day}: the partners answer the seed sets of {args.date} ---")
        answers = _answer_seed_sets(settings, agreements, client, args, answer_day)
        code, log = run_night(settings, answer_day, env)
        drops = {f"{a['partner_id']}/{answer_day}": {"rows_valid": len(a["expected_profiles"]) + len(a["expected_unmatched"]),
                                                       "expected_matches": {"by_email": 0, "by_phone": 0,
                                                                            "by_seed": len(a["expected_profiles"]),
                                                                            "unmatched": len(a["expected_unmatched"])}}
                 for a in answers}
        # read back while the S3 server runs (a lake warehouse's files are in it)
        return code or report(settings, answer_day, log, {"drops": drops}) or _report_seed_returns(settings, answers)


def _answer_seed_sets(settings, agreements, client, args, answer_day: dt.date) -> list[dict]:
    """Each seed set sent on args.date, fetched from the outbox as the partner would, answered with a
    seed-keyed drop for answer_day (synth.seeded: 80% of the seeds it finds come back, with two made-up
    seeds the pipeline must quarantine) and uploaded; returns each drop's ground truth."""
    root = settings.data_dir / "synth-seeded"
    answers = []
    with warehouse(settings, read_only=True) as con:
        sent = [r for r in seed_exports(con, args.date) if r["status"] == "sent"]
    for export in sent:
        received = _download(client, export["location"], root / "received" / export["partner_id"] / args.date.isoformat())
        answers.append(write_seeded_drop(root / "drops", settings.landing_bucket, SeededDropSpec(
            agreements[export["partner_id"]], answer_day, received, foreign_rows=0), PROFILES_SEED, args.profiles, seed=7))
    print(f"uploaded {synth.upload_tree(client, root / 'drops')} objects: seed-keyed drops of "
          f"{', '.join(a['partner_id'] for a in answers) or 'nobody (no seed set was sent)'}")
    return answers


def _download(client, location: str, folder: Path) -> Path:
    """The objects under an s3:// folder, copied into `folder` (emptied first)."""
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    if folder.exists():
        for old in folder.iterdir():
            old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    for obj in list_objects(client, bucket, prefix):
        download_with_sha256(client, bucket, obj.key, folder / obj.key.rsplit("/", 1)[-1])
    return folder


def _report_seed_returns(settings, answers: list[dict]) -> int:
    """Print the scorecard's seed reconciliation of each answered seed set beside the ground truth; 1 on a mismatch."""
    mismatches = []
    print("\nSeed reconciliation (partner_scorecard, per seed date):")
    with published_marts(settings) as con:
        for answer in answers:
            found = con.execute("""SELECT seeds_sent, seeds_returned, seed_return_rate FROM partner_scorecard
                                   WHERE partner_id = ? AND drop_date = ?""", [answer["partner_id"], answer["seed_date"]]).fetchone()
            sent, returned, rate = found or (None, None, None)
            expected = (answer["seeds_in_set"], len(answer["seeds_returned"]))
            print(f"  {answer['partner_id']:<16}seed date {answer['seed_date']}: {sent} sent, {returned} returned with data"
                  f" ({rate:.1%})" if rate is not None else f"  {answer['partner_id']:<16}seed date {answer['seed_date']}: none")
            print(f"  {'':<16}ground truth: {expected[0]} sent, {expected[1]} returned")
            if (sent, returned) != expected:
                mismatches.append(f"{answer['partner_id']} seed date {answer['seed_date']}: {(sent, returned)} (sent, returned), "
                                  f"ground truth {expected}")
    code = _mismatch_code(mismatches)
    if not code:
        print("\nThe seed-keyed drops match the generator's ground truth.")
    return code


def _report_prospects(settings, agreements, args) -> int:
    """Print each prospect audience sent (activation_syncs of the published copy) beside the generator's
    ground truth (truth.expected_prospect_audience over the partner's drop); 1 on a mismatch."""
    governance = load_governance(settings.governance_dir, agreements)
    mismatches = []
    print("\nProspect audiences (prospect_segment_membership -> activation):")
    with published_marts(settings) as con:
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
    return _mismatch_code(mismatches)


def _mismatch_code(mismatches: list[str]) -> int:
    """Print the ground-truth mismatches, if any; the exit code they mean."""
    if mismatches:
        print("\nGROUND TRUTH MISMATCH:\n  " + "\n  ".join(mismatches), file=sys.stderr)
    return 1 if mismatches else 0


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
