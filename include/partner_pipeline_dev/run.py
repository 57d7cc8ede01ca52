"""`make run DATE=YYYY-MM-DD [UPLOAD=dir]`: the nightly DAG for one date, on your own drops.

With PIPELINE_S3_ENDPOINT_URL set it uses that S3 endpoint; otherwise it serves the embedded
store in data/s3 (the one `make demo` and `make s3` use) for the length of the run. UPLOAD names
a local folder laid out as <bucket>/<key> (e.g. partner-landing/acme_bank/2026-11-21/...) that is
uploaded first, each folder's _SUCCESS last. Then `airflow dags test partner_drops_nightly DATE`
runs, and what the night did is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import textwrap
from pathlib import Path

from partner_pipeline.settings import Settings, load_settings
from partner_pipeline.run_report import seed_exports
from partner_pipeline.storage import client_from_settings
from partner_pipeline.transform import published_marts, published_summary
from partner_pipeline.warehouse import warehouse
from partner_pipeline_dev.local_airflow import run_nightly
from partner_pipeline_dev.services import embedded_services
from partner_pipeline_dev.upload import upload_tree


def run_night(settings: Settings, day: dt.date, env: dict[str, str]) -> tuple[int, Path]:
    print(f"running `airflow dags test partner_drops_nightly {day}` ...", flush=True)
    result = run_nightly(day.isoformat(), settings.data_dir / "airflow", env)
    log = settings.data_dir / "airflow" / f"nightly-{day}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(result.stdout or "")
    if result.returncode != 0:
        print(f"the DAG run failed (exit {result.returncode}); its log is in {log}", file=sys.stderr)
    return result.returncode, log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--date", type=dt.date.fromisoformat, required=True, help="business date D of the drops")
    parser.add_argument("--upload", type=Path, help="local folder laid out as <bucket>/<key> to upload first")
    args = parser.parse_args(argv)
    settings = load_settings()
    with embedded_services(settings) as env:
        if args.upload:
            if not args.upload.is_dir():
                print(f"--upload {args.upload}: not a folder; lay it out as <bucket>/<key>", file=sys.stderr)
                return 2
            print(f"uploaded {upload_tree(client_from_settings(load_settings()), args.upload)} objects from {args.upload}")
        code, log = run_night(settings, args.date, env)
    return code or report(settings, args.date, log)


def report(settings, day: dt.date, log: Path, truth: dict | None = None) -> int:
    """Print what the night did, from the audit log and the published marts; with a ground truth, check it."""
    truth = truth or {"drops": {}}
    with warehouse(settings, read_only=True) as con:
        latest = con.execute(
            """SELECT partner_id, arg_max(event, rowid), arg_max(run_id, rowid) FROM audit.drop_events
               WHERE drop_date = ? AND event IN ('loaded', 'quarantined', 'skipped', 'incomplete') GROUP BY partner_id ORDER BY partner_id""",
            [day]).fetchall()
        seed_sets = seed_exports(con, day)
    state = {r[0]: ("-", None, None, None, None) for r in latest}  # a drop never loaded nor quarantined
    with published_marts(settings) as published:  # none until a night is published
        if published:
            state |= {r[0]: r[1:] for r in published.execute(
                """SELECT partner_id, state, rows_received, rows_loaded, rows_quarantined, reasons FROM drop_states
                   WHERE drop_date = ?""", [day]).fetchall()}
    print(f"\nNightly run for drop date {day} (Airflow run {latest[0][2] if latest else '-'})")
    print(f"  {'partner':<16}{'this run':<13}{'state':<13}{'received':>9}{'loaded':>9}{'quarantined rows':>18}")
    mismatches = []
    for partner_id, event, _ in latest:
        current, received, loaded, bad, reasons = state[partner_id]
        print(f"  {partner_id:<16}{event:<13}{current:<13}{received or 0:>9}{loaded or 0:>9}{bad or 0:>18}")
        for reason in _reasons(reasons):
            print(f"      {reason}")
        expected = truth["drops"].get(f"{partner_id}/{day}", {})
        if current == "loaded" and expected and expected.get("rows_valid") != loaded:
            mismatches.append(f"{partner_id}: loaded {loaded} rows, ground truth says {expected.get('rows_valid')}")
    with published_marts(settings) as published:
        mismatches += _report_marts(published, day, truth) if published else []
    if seed_sets:
        print("\nSeed sets (audit.seed_exports):")
        for r in seed_sets:
            print(f"  {r['partner_id']:<16}{r['status']:<9}{r['seeds_sent']:>8} seeds  {r['location'] or r['reason']}")
    print("\nWhere the results are:")
    if settings.warehouse_kind == "lake":
        print(f"  warehouse (DuckLake):    catalog {settings.lake_catalog}, files in {settings.lake_data_path}  raw.*, staging.*, "
              "intermediate.*, marts.*, audit.*")
        print("  analysts:                make analyst  (the published marts, read-only; EXPORT=file.duckdb for a copy)")
    else:
        print(f"  analysts' copy (DuckDB): {settings.published_path}  open with: .venv/bin/duckdb -readonly {settings.published_path}")
        print(f"  warehouse (DuckDB):      {settings.warehouse_path}  raw.*, staging.*, intermediate.*, audit.drop_events")
        print(f"  marts (DuckDB):          {settings.marts_path}  attached to the warehouse as marts.*")
    print(f"  validation results:      {settings.validation_dir}/<run id>/*.json and Data Docs *.html")
    print(f"  quarantined drops:       s3://{settings.quarantine_bucket}/<partner>/<date>/<delivery>/report.json")
    print(f"  file exports:            s3://{settings.activation_bucket}/<destination>/<segment>/<date>/<sync>/")
    print(f"  partner outboxes:        s3://{settings.outbox_bucket}/<partner>/overlap/<date>.csv, .../erasure/<date>.csv, .../seeds/<date>/")
    print(f"  run report (HTML):       {settings.reports_dir / f'{day}.html'}  and s3://{settings.reports_bucket}/{day}/report.html")
    print(f"  Airflow log of the run:  {log}")
    if mismatches:
        print("\nGROUND TRUTH MISMATCH:\n  " + "\n  ".join(mismatches), file=sys.stderr)
        return 1
    if truth["drops"]:
        print("\nEvery loaded drop matches the generator's ground truth.")
    return 0


def _report_marts(published, day: dt.date, truth: dict) -> list[str]:
    """Print the match report and segment sizes from the published marts; return ground-truth mismatches."""
    mismatches = []
    summary = published_summary(published, day)
    print("\nMatching (published marts, match_report):")
    print(f"  {'partner':<16}{'valid':>8}{'consented':>11}{'by email':>10}{'by phone':>10}{'by seed':>9}{'by id':>7}"
          f"{'ambiguous':>11}{'unmatched':>11}{'rate':>8}")
    for r in summary["match_report"]:
        print(f"  {r['partner_id']:<16}{r['rows_valid']:>8}{r['rows_consented']:>11}{r['matched_by_email']:>10}"
              f"{r['matched_by_phone']:>10}{r['matched_by_seed']:>9}{r['matched_by_partner_id']:>7}{r['ambiguous']:>11}"
              f"{r['unmatched']:>11}{r['match_rate']:>8.1%}")
        expected = truth["drops"].get(f"{r['partner_id']}/{day}", {}).get("expected_matches", {})
        found = (r["matched_by_email"], r["matched_by_phone"], r["matched_by_seed"], r["ambiguous"], r["unmatched"])
        if expected and found != (expected["by_email"], expected["by_phone"], expected.get("by_seed", 0), expected.get("ambiguous", 0),
                                  expected["unmatched"]):
            mismatches.append(f"{r['partner_id']}: matched {found} (email, phone, seed, ambiguous, none), ground truth {expected}")
    print(f"  profiles enriched by at least one partner: {summary['profiles_enriched']}")
    print("\nSegments (segment_membership):")
    for name, size in summary["segment_sizes"].items():
        expected = truth.get("segments", {}).get(name)
        print(f"  {name:<28}{size:>8} members" + ("" if expected is None else f"  (ground truth {expected})"))
        if expected is not None and expected != size:
            mismatches.append(f"segment {name}: {size} members, ground truth {expected}")
    print("\nActivation (activation_log, activation_syncs):")
    print(f"  {'segment':<26}{'destination':<22}{'status':<11}{'added':>7}{'removed':>9}{'held':>7}")
    for r in summary["activation"]:
        expected = truth.get("sendable", {}).get(r["segment_name"])
        print(f"  {r['segment_name']:<26}{r['destination_id']:<22}{r['status']:<11}{r['adds']:>7}{r['removes']:>9}"
              f"{r['members_held'] or 0:>7}" + ("" if expected is None else f"  (ground truth {expected} sendable)"))
        if expected is not None and r["status"] != "blocked" and (r["members_held"] or 0) != expected:
            mismatches.append(f"{r['segment_name']} -> {r['destination_id']}: holds {r['members_held']}, ground truth {expected} sendable")
    return mismatches


def _reasons(reasons_json) -> list[str]:
    reasons = json.loads(reasons_json or "null") or []
    by_rule = ", ".join(f"{r['rule']} {r['rows']}" for r in reasons if r.get("code") == "rows_quarantined")
    found = textwrap.wrap(f"rows quarantined by rule: {by_rule}", 100, subsequent_indent="  ") if by_rule else []
    for reason in reasons:
        if reason.get("code") != "rows_quarantined":
            text = f"{reason['code']}: {reason.get('file', '')} {reason.get('message', '')}" + (f" Fix: {reason['fix']}" if reason.get("fix") else "")
            found += textwrap.wrap(text.replace("  ", " "), 110, subsequent_indent="  ")
    return found


if __name__ == "__main__":
    sys.exit(main())


