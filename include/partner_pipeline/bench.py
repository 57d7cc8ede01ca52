"""`make bench`: one large night, timed stage by stage, with peak memory.

Generates a first-party snapshot (default 10M profiles) and one partner drop (default 10M rows,
csv.gz, 1% bad rows) into a local S3 server, then runs the nightly task functions (discover,
ingest, publish, load_first_party, transform = dbt build + published copy) in a child process
whose peak RSS is read from the kernel. Checks the outcome against the generator's ground truth
(valid rows, rows per rule, matches by email and phone) and writes bench/results/night-<rows>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from partner_pipeline.settings import PROJECT_ROOT

DAY = dt.date(2026, 11, 21)


def _child(run_id: str) -> None:
    """Runs in the measured process: exactly what the DAG's tasks do for one date."""
    from partner_pipeline import nightly

    timings = {}
    started = time.perf_counter()
    drops = nightly.discover(DAY, run_id)
    timings["discover"] = time.perf_counter() - started
    outcomes = []
    for drop in drops:
        started = time.perf_counter()
        outcomes.append(nightly.ingest(drop, run_id))
        timings["ingest"] = time.perf_counter() - started
    started = time.perf_counter()
    nightly.publish(outcomes, DAY, run_id)
    timings["publish"] = time.perf_counter() - started
    started = time.perf_counter()
    nightly.load_first_party(DAY)
    timings["load_first_party"] = time.perf_counter() - started
    started = time.perf_counter()
    transformed = nightly.transform(DAY)
    timings["transform"] = time.perf_counter() - started
    print(json.dumps({"timings": timings, "outcomes": outcomes, "transform": transformed}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="partner rows")
    parser.add_argument("--profiles", type=int, default=None, help="first-party profiles (default: as many as rows)")
    parser.add_argument("--format", default="csv.gz", choices=["csv", "csv.gz", "parquet"])
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--bad-row-share", type=float, default=0.01)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (S3 store, warehouse) for inspection")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0

    from partner_pipeline import synth
    from partner_pipeline.agreements import load_agreements
    from partner_pipeline.local_s3 import local_s3
    from partner_pipeline.settings import load_settings
    from partner_pipeline.storage import s3_client

    work = Path(tempfile.mkdtemp(prefix="bench-", dir=PROJECT_ROOT / "data" if (PROJECT_ROOT / "data").exists() else None))
    os.environ.update({"PIPELINE_DATA_DIR": str(work / "data")})
    settings = load_settings()
    agreement = load_agreements(settings.agreements_dir)["acme_bank"]
    profiles = args.profiles or args.rows
    with local_s3(work / "s3", [settings.landing_bucket, settings.quarantine_bucket, settings.first_party_bucket]) as server:
        os.environ.update(server.env())
        started = time.perf_counter()
        synth.generate_profiles(work / "synth", settings.first_party_bucket, DAY, profiles, 42)
        truth = synth.write_drop(work / "synth", settings.landing_bucket,
                                 synth.DropSpec(agreement, DAY, args.rows, args.format, args.files, args.bad_row_share),
                                 profiles_seed=42, n_profiles=profiles, seed=1)
        generated = time.perf_counter() - started
        synth.upload_tree(s3_client(server.endpoint_url, server.access_key, server.secret_key), work / "synth")
        print(f"generated {profiles:,} profiles and {args.rows:,} partner rows in {generated:.0f}s; measuring the night ...", flush=True)
        started = time.perf_counter()
        child = subprocess.run([sys.executable, "-m", "partner_pipeline.bench", "--child", "bench"],
                               env=os.environ, capture_output=True, text=True)
        wall = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if child.returncode != 0:
        print(child.stderr[-5000:], file=sys.stderr)
        print(f"work directory kept for inspection: {work}", file=sys.stderr)
        return 1
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    outcome = measured["outcomes"][0]
    [report] = measured["transform"]["match_report"]
    expected = truth["expected_matches"]
    ok = outcome["status"] == "staged" and outcome["rows_valid"] == truth["rows_valid"] == report["rows_valid"] and \
        outcome["failures_by_rule"] == truth["invalid_by_rule"] and \
        (report["matched_by_email"], report["matched_by_phone"], report["unmatched"], report["ambiguous"]) == \
        (expected["by_email"], expected["by_phone"], expected["unmatched"], 0)
    result = {
        "rows": args.rows, "profiles": profiles, "format": args.format, "files": args.files, "bad_row_share": args.bad_row_share,
        "wall_seconds": round(wall, 1), "peak_rss_mb": round(peak_mb), "rows_per_second": round(args.rows / wall),
        "stages": {k: round(v, 1) for k, v in measured["timings"].items()} | {f"ingest.{k}": v for k, v in outcome.get("seconds", {}).items()},
        "slowest_dbt_nodes_seconds": measured["transform"]["slowest_dbt_nodes_seconds"],
        "segment_sizes": measured["transform"]["segment_sizes"],
        "matches_ground_truth": ok, "machine": f"{os.cpu_count()} cores, {platform.python_version()}",
        "measured_on": dt.date.today().isoformat(),
    }
    out = PROJECT_ROOT / "bench" / "results" / f"night-{args.rows}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    stages = result["stages"]
    print(f"\n| {args.rows:,} x {profiles:,} | {stages['ingest']} s | {stages['publish']} s | {stages['load_first_party']} s | "
          f"{stages['transform']} s | {result['wall_seconds']} s | {result['peak_rss_mb']:,} MB | {'yes' if ok else 'NO'} |")
    if args.keep:
        print(f"work directory kept: {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
