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
import os
import sys

from partner_pipeline import synth
from partner_pipeline.agreements import load_agreements
from partner_pipeline.local_airflow import run_nightly
from partner_pipeline.local_s3 import local_s3
from partner_pipeline.settings import load_settings
from partner_pipeline.storage import s3_client
from partner_pipeline.transform import published_summary
from partner_pipeline.warehouse import warehouse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--date", type=dt.date.fromisoformat, default=dt.date(2026, 11, 21), help="business date D of the drops")
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=5_000, help="rows per partner drop")
    args = parser.parse_args(argv)

    settings = load_settings()
    agreements = load_agreements(settings.agreements_dir)
    buckets = [settings.landing_bucket, settings.first_party_bucket, settings.quarantine_bucket, settings.outbox_bucket]
    with local_s3(settings.data_dir / "s3", buckets) as server:
        os.environ.update(server.env())
        print(f"S3 server (SeaweedFS) on {server.endpoint_url}, store in {settings.data_dir / 's3'}")
        truth = _generate(settings, agreements, args)
        uploaded = synth.upload_tree(s3_client(server.endpoint_url, server.access_key, server.secret_key),
                                     settings.data_dir / "synth")
        print(f"uploaded {uploaded} objects; running `airflow dags test partner_drops_nightly {args.date}` ...")
        result = run_nightly(args.date.isoformat(), settings.data_dir / "airflow", server.env())
        log = settings.data_dir / "airflow" / "last_demo_run.log"
        log.write_text(result.stdout or "")
        if result.returncode != 0:
            print(f"the DAG run failed (exit {result.returncode}); its log is in {log}", file=sys.stderr)
            return 1
        return _report(settings, args.date, truth, log)


def _generate(settings, agreements, args) -> dict:
    any_agreement = next(iter(agreements.values()))
    # Beside one drop per agreement: a partner with no agreement (quarantined) and a drop still arriving.
    extra = tuple(synth.DropSpec(agreement=any_agreement, drop_date=args.date, rows=200, partner_id=partner_id, corruption=corruption)
                  for partner_id, corruption in (("initech_media", None), ("hooli_data", "missing_success")))
    return synth.generate_scenario(
        settings.data_dir / "synth", landing_bucket=settings.landing_bucket, first_party_bucket=settings.first_party_bucket,
        agreements=agreements, drop_date=args.date, n_profiles=args.profiles, rows_per_partner=args.rows, seed=42,
        extra_drops=extra)


def _report(settings, day: dt.date, truth: dict, log) -> int:
    with warehouse(settings, read_only=True) as con:
        latest = con.execute(
            """SELECT partner_id, arg_max(event, event_id), arg_max(run_id, event_id) FROM audit.drop_events
               WHERE drop_date = ? AND event IN ('loaded', 'quarantined', 'skipped', 'incomplete') GROUP BY partner_id ORDER BY partner_id""",
            [day]).fetchall()
        state = {r[0]: con.execute(
            """SELECT arg_max(event, event_id), arg_max(rows_received, event_id), arg_max(rows_loaded, event_id),
                      arg_max(rows_quarantined, event_id), arg_max(reasons, event_id)
               FROM audit.drop_events WHERE partner_id = ? AND drop_date = ? AND event IN ('loaded', 'quarantined', 'incomplete')""",
            [r[0], day]).fetchone() for r in latest}
    print(f"\nNightly run for drop date {day} (Airflow run {latest[0][2] if latest else '-'})")
    print(f"  {'partner':<16}{'this run':<13}{'state':<13}{'received':>9}{'loaded':>9}{'quarantined rows':>18}")
    mismatches = []
    for partner_id, event, _ in latest:
        current, received, loaded, bad, reasons = state[partner_id]
        print(f"  {partner_id:<16}{event:<13}{current:<13}{received or 0:>9}{loaded or 0:>9}{bad or 0:>18}")
        for reason in _reasons(reasons):
            print(f"      {reason}")
        expected = truth["drops"].get(f"{partner_id}/{day}", {})
        if current == "loaded" and expected.get("rows_valid") != loaded:
            mismatches.append(f"{partner_id}: loaded {loaded} rows, ground truth says {expected.get('rows_valid')}")
    mismatches += _report_marts(settings, day, truth)
    print("\nWhere the results are:")
    print(f"  analysts' copy (DuckDB): {settings.published_path}  open with: .venv/bin/duckdb -readonly {settings.published_path}")
    print(f"  warehouse (DuckDB):      {settings.warehouse_path}  raw.*, staging.*, intermediate.*, marts.*, audit.drop_events")
    print(f"  validation results:      {settings.validation_dir}/<run id>/*.json and Data Docs *.html")
    print(f"  quarantined drops:       s3://{settings.quarantine_bucket}/<partner>/<date>/<delivery>/report.json (store: {settings.data_dir / 's3'})")
    print(f"  Airflow log of the run:  {log}")
    if mismatches:
        print("\nGROUND TRUTH MISMATCH:\n  " + "\n  ".join(mismatches), file=sys.stderr)
        return 1
    print("\nEvery loaded drop matches the generator's ground truth.")
    return 0


def _report_marts(settings, day: dt.date, truth: dict) -> list[str]:
    """Print the match report and segment sizes from the published marts; return ground-truth mismatches."""
    mismatches = []
    summary = published_summary(settings.published_path, day)
    print(f"\nMatching (published marts, match_report):")
    print(f"  {'partner':<16}{'valid':>8}{'consented':>11}{'by email':>10}{'by phone':>10}{'ambiguous':>11}{'unmatched':>11}{'rate':>8}")
    for r in summary["match_report"]:
        print(f"  {r['partner_id']:<16}{r['rows_valid']:>8}{r['rows_consented']:>11}{r['matched_by_email']:>10}"
              f"{r['matched_by_phone']:>10}{r['ambiguous']:>11}{r['unmatched']:>11}{r['match_rate']:>8.1%}")
        expected = truth["drops"].get(f"{r['partner_id']}/{day}", {}).get("expected_matches", {})
        found = (r["matched_by_email"], r["matched_by_phone"], r["unmatched"])
        if expected and found != (expected["by_email"], expected["by_phone"], expected["unmatched"]):
            mismatches.append(f"{r['partner_id']}: matched {found} (email, phone, none), ground truth {expected}")
    print(f"  profiles enriched by at least one partner: {summary['profiles_enriched']}")
    print("\nSegments (segment_membership):")
    for name, size in summary["segment_sizes"].items():
        expected = truth.get("segments", {}).get(name)
        print(f"  {name:<28}{size:>8} members" + ("" if expected is None else f"  (ground truth {expected})"))
        if expected is not None and expected != size:
            mismatches.append(f"segment {name}: {size} members, ground truth {expected}")
    return mismatches


def _reasons(reasons_json) -> list[str]:
    import json

    import textwrap

    reasons = json.loads(reasons_json or "null") or []
    by_rule = ", ".join(f"{r['rule']} {r['rows']}" for r in reasons if r.get("code") == "rows_quarantined")
    found = textwrap.wrap(f"rows quarantined by rule: {by_rule}", 100, subsequent_indent="  ") if by_rule else []
    for reason in reasons:
        if reason.get("code") != "rows_quarantined":
            found.append(f"{reason['code']}: {reason.get('file', '')} {reason.get('message', '')}".replace("  ", " "))
    return found


if __name__ == "__main__":
    sys.exit(main())
