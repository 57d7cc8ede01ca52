"""`python -m partner_pipeline_dev.synth`: write a scenario into OUT/<bucket>/<key>, optionally upload it."""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

from partner_pipeline_dev.synth.drops import FORMATS
from partner_pipeline_dev.synth.scenario import generate_scenario
from partner_pipeline_dev.upload import upload_tree


def main(argv: list[str] | None = None) -> int:
    from partner_pipeline.agreements import load_agreements
    from partner_pipeline.settings import load_settings

    settings = load_settings()
    parser = argparse.ArgumentParser(prog="python -m partner_pipeline_dev.synth", description=(
        "Write deterministic synthetic first-party profiles and one partner drop per agreement valid on --date "
        "into OUT/<bucket>/<key>, with OUT/ground_truth.json; optionally upload them to S3."))
    parser.add_argument("--out", type=Path, required=True, help="local output directory (mirrors object storage)")
    parser.add_argument("--date", type=dt.date.fromisoformat, required=True, help="drop date and profile snapshot date, YYYY-MM-DD")
    parser.add_argument("--profiles", type=int, required=True, help="number of first-party profiles")
    parser.add_argument("--rows", type=int, required=True, help="rows per partner drop")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bad-row-share", type=float, default=0.02, help="share of rows made invalid (default 0.02)")
    parser.add_argument("--format", choices=FORMATS, default="csv.gz", dest="file_format")
    parser.add_argument("--files", type=int, default=1, help="data files per drop")
    parser.add_argument("--agreements-dir", type=Path, default=settings.agreements_dir)
    parser.add_argument("--segments-yml", type=Path, default=None,
                        help="dbt segments YAML whose rules the ground truth sizes (default: the project's)")
    parser.add_argument("--upload", action="store_true",
                        help="upload to the S3 endpoint and buckets from the PIPELINE_* / AWS_* environment")
    args = parser.parse_args(argv)

    started = time.monotonic()
    truth = generate_scenario(
        args.out, landing_bucket=settings.landing_bucket, first_party_bucket=settings.first_party_bucket,
        agreements=load_agreements(args.agreements_dir), drop_date=args.date, n_profiles=args.profiles,
        rows_per_partner=args.rows, seed=args.seed, bad_row_share=args.bad_row_share,
        file_format=args.file_format, files=args.files, segments_yml=args.segments_yml,
    )
    drops = "; ".join(
        f"{name}: {d['rows_total']} rows, {d['rows_invalid']} invalid, "
        f"{d['expected_matches']['by_email'] + d['expected_matches']['by_phone']} expected matches"
        for name, d in truth["drops"].items()
    ) or "none (no agreement valid on that date)"
    summary = (
        f"Wrote {args.profiles} first-party profiles (snapshot {args.date}, "
        f"{truth['profiles']['profile_sensitive_emails']['total']} profile-sensitive emails) and "
        f"{len(truth['drops'])} partner drops as {args.file_format} ({drops}) under {args.out} in "
        f"{time.monotonic() - started:.1f}s; ground truth in {args.out / 'ground_truth.json'} "
        f"(expected segment sizes: {', '.join(f'{k} {v}' for k, v in truth['segments'].items()) or 'no segments'})."
    )
    if args.upload:
        from partner_pipeline.storage import client_from_settings

        uploaded = upload_tree(client_from_settings(settings), args.out)
        summary += f" Uploaded {uploaded} objects to {settings.s3_endpoint_url or 'AWS S3'}."
    print(summary)
    return 0
