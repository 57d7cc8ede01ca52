"""`make bench`: load and validate one large partner drop, and measure time and peak memory.

Generates a drop (default 10M rows, csv.gz, 1% bad rows) into a local S3 server, then runs the
nightly task functions (discover, ingest, publish) in a child process whose peak RSS is read
from the kernel. Checks the outcome against the generator's ground truth and writes
bench/results/ingest-<rows>.json and a Markdown line for the README.
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
    print(json.dumps({"timings": timings, "outcomes": outcomes}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--format", default="csv.gz", choices=["csv", "csv.gz", "parquet"])
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--bad-row-share", type=float, default=0.01)
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
    with local_s3(work / "s3", [settings.landing_bucket, settings.quarantine_bucket]) as server:
        os.environ.update(server.env())
        started = time.perf_counter()
        truth = synth.write_drop(work / "synth", settings.landing_bucket,
                                 synth.DropSpec(agreement, DAY, args.rows, args.format, args.files, args.bad_row_share),
                                 profiles_seed=42, n_profiles=args.rows, seed=1)
        generated = time.perf_counter() - started
        synth.upload_tree(s3_client(server.endpoint_url, server.access_key, server.secret_key), work / "synth")
        print(f"generated {args.rows:,} rows in {generated:.0f}s; measuring ingestion ...", flush=True)
        started = time.perf_counter()
        child = subprocess.run([sys.executable, "-m", "partner_pipeline.bench", "--child", "bench"],
                               env=os.environ, capture_output=True, text=True)
        wall = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if child.returncode != 0:
        print(child.stderr[-5000:], file=sys.stderr)
        return 1
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    outcome = measured["outcomes"][0]
    ok = outcome["status"] == "staged" and outcome["rows_valid"] == truth["rows_valid"] and \
        outcome["failures_by_rule"] == truth["invalid_by_rule"]
    result = {
        "rows": args.rows, "format": args.format, "files": args.files, "bad_row_share": args.bad_row_share,
        "wall_seconds": round(wall, 1), "peak_rss_mb": round(peak_mb), "rows_per_second": round(args.rows / wall),
        "stages": {k: round(v, 1) for k, v in measured["timings"].items()} | {f"ingest.{k}": v for k, v in outcome.get("seconds", {}).items()},
        "matches_ground_truth": ok, "machine": f"{os.cpu_count()} cores, {platform.python_version()}",
        "measured_on": dt.date.today().isoformat(),
    }
    out = PROJECT_ROOT / "bench" / "results" / f"ingest-{args.rows}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"\n| {args.rows:,} | {args.format} | {result['wall_seconds']} s | {result['peak_rss_mb']} MB | "
          f"{result['rows_per_second']:,} rows/s | {'yes' if ok else 'NO'} |")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
