"""`make bench`: the whole nightly run against its floor, at several sizes.

For each warehouse configuration (--warehouse: the embedded lake, the lake on a PostgreSQL catalog
on loopback, or the DuckDB file) and each size (partner rows, as many profiles) it generates a
first-party snapshot and a drop of rows / 2 rows for each of Acme's and Globex's agreements (csv.gz,
1% bad rows, a few ambiguous pairs), so every shipped segment has members, into a local S3 server, then:
- runs every task of the nightly DAG for the date (discover, ingest (each drop in a process of its own,
  side by side, as the DAG's mapped task runs them), publish, load_first_party, transform = dbt build,
  data_rights, activate against a local audience API and S3 exports, share_overlap_reports,
  publish_marts) in a child process, sampling the RSS of its whole process tree (dbt and the
  ingests run as grandchildren), and of the PostgreSQL catalog server's, if any;
- runs the floor (bench_floor: the same work in one DuckDB process) on the same objects;
- checks both against the generator's ground truth (per drop: valid rows, rows per rule, matches
  by email and phone, ambiguous rows) and each other (segment sizes, members sent), and fails on any
  mismatch or a segment that sends nobody;
- then two later nights on the same lake, measured the same way: the next date, with a new drop per
  partner and a snapshot in which 1% of the profiles' emails changed (upper-cased: the pipeline must
  hash them again, yet they normalize as before, so the new drops' ground truth holds), and the date
  after, with no new drop and no new snapshot;
- writes bench/results/night-<warehouse>-<rows>.json and prints a Markdown table.
A tiny calibration night (1,000 rows) gives the fixed cost, so linear growth can be judged on the
variable part. The DAG file's parse time comes from Airflow's DagBag.

`make bench-scale` (--profiles) runs the first night alone, checked against its ground truth, at each
profile count against the same partner rows (issue 18's scale curve: 1M to 50M profiles x 10M rows),
and writes scale-<warehouse>-<rows>.json and an SVG plot of time and peak memory by profiles.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from partner_pipeline.contracts import DropOutcome
from partner_pipeline.settings import NIGHT_MAX_ACTIVE_TASKS, PROJECT_ROOT

DAY = dt.date(2026, 11, 21)
SECOND_DAY, QUIET_DAY = DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=2)
CHANGED_PROFILES = 100  # the second night's snapshot changes the email of one profile in this many
TASKS = ("discover", "ingest", "publish", "load_first_party", "transform", "data_rights", "activate",
         "share_overlap_reports", "export_seeds", "publish_marts")
SEED_KEY = "bench-seed-key-" + "0123456789abcdef" * 2  # the key of every seed set the bench sends (not a secret)
BENCH_PARTNERS = ("acme_bank", "globex_retail")
CALIBRATION_ROWS = 1000  # the tiny night that gives the fixed cost
AMBIGUOUS_SHARE = 0.002  # rows in pairs of matching persons under one partner_person_id (synth.DropSpec)


def _ingest(drop: dict, run_id: str) -> dict:
    from partner_pipeline import nightly

    return nightly.ingest(DropOutcome.from_xcom(drop), run_id).to_xcom()


def _child(run_id: str, day: dt.date) -> None:
    """Runs in the measured process: exactly what the DAG's tasks do for one date, in the DAG's order (the
    drops' ingests side by side, in processes of their own)."""
    from partner_pipeline import nightly

    timings, spans = {}, {}

    def timed(name, call):
        started, since = time.perf_counter(), time.time()
        value = call()
        timings[name] = timings.get(name, 0) + time.perf_counter() - started
        spans.setdefault(name, []).append((since, time.time()))
        return value

    drops = timed("discover", lambda: nightly.discover(day, run_id))
    # the DAG's ingest is a mapped task: each drop in its own task process, up to its max_active_tasks at once
    with ProcessPoolExecutor(max_workers=min(NIGHT_MAX_ACTIVE_TASKS, len(drops) or 1), mp_context=multiprocessing.get_context("spawn")) as pool:
        outcomes = timed("ingest", lambda: [DropOutcome.from_xcom(o) for o in pool.map(_ingest, [d.to_xcom() for d in drops],
                                                                                        [run_id] * len(drops))])
    timed("publish", lambda: nightly.publish(outcomes, day, run_id))
    timed("load_first_party", lambda: nightly.load_first_party(day))
    transformed = timed("transform", lambda: nightly.transform(day, run_id))
    timed("data_rights", lambda: nightly.data_rights(day, run_id))
    activated = timed("activate", lambda: nightly.activate(day, run_id))
    timed("share_overlap_reports", lambda: nightly.share_overlap_reports(day, run_id))
    seed_sets = timed("export_seeds", lambda: nightly.export_seeds(day, run_id))
    published = timed("publish_marts", lambda: nightly.publish_marts(day, run_id))
    print(json.dumps({"timings": timings, "spans": spans, "outcomes": [o.to_xcom() for o in outcomes], "transform": transformed, "published": published,
                      "activation": activated, "seed_sets": seed_sets}, default=str))


class TreeMemory:
    """Peak of the summed RSS of processes and all their descendants, sampled every 0.2 s; `samples`
    keeps (time, the roots' RSS, their descendants') for the peak of each stage."""

    def __init__(self, *pids: int):
        import psutil

        self.roots, self.peak, self._stop = [psutil.Process(pid) for pid in pids], 0, threading.Event()
        self.samples: list[tuple[float, int, int]] = []
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                roots = descendants = 0
                for root in self.roots:
                    for process in (root, *root.children(recursive=True)):
                        try:
                            rss = process.memory_info().rss
                        except psutil.Error:
                            continue
                        if process is root:
                            roots += rss
                        else:
                            descendants += rss
                self.peak = max(self.peak, roots + descendants)
                self.samples.append((time.time(), roots, descendants))
            except psutil.Error:
                pass
            self._stop.wait(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def stage_peaks(samples: list[tuple[float, int, int]], spans: dict[str, list[list[float]]]) -> dict[str, dict[str, int]]:
    """Each stage's peak tree RSS (MB), split at that peak into the task's process (and the catalog
    server's, if any) and their children (dbt; the catalog server's backends)."""
    peaks = {}
    for stage, stage_spans in spans.items():
        inside = [(r + d, r, d) for t, r, d in samples if any(start <= t <= end for start, end in stage_spans)]
        if inside:
            total, roots, children = max(inside)
            peaks[stage] = {"total": round(total / 2**20), "process": round(roots / 2**20), "children": round(children / 2**20)}
    return peaks


def dag_parse_seconds() -> dict[str, float]:
    probe = ("import json; from airflow.dag_processing.dagbag import DagBag; "
             f"b = DagBag(dag_folder={str(PROJECT_ROOT / 'dags')!r}); "
             "print(json.dumps({s.file: s.duration.total_seconds() for s in b.dagbag_stats}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW_HOME": tempfile.mkdtemp()})
    return json.loads(out.stdout.strip().splitlines()[-1])


# --warehouse: where the night keeps its warehouse -> the environment that selects it
WAREHOUSES = {"lake": {"PIPELINE_WAREHOUSE": "lake"}, "lake-postgres": {"PIPELINE_WAREHOUSE": "lake"},
              "file": {"PIPELINE_WAREHOUSE": "file"}}


def bench_one(rows: int, args, warehouse: str = "lake", profiles: int | None = None, with_floor: bool = True) -> dict:
    """One size: `rows` partner rows against `profiles` profiles (default as many). with_floor: also the
    floor on the same objects and the two later nights (make bench); without (make bench-scale), the
    first night alone, checked against the ground truth."""
    from partner_pipeline.agreements import load_agreements
    from partner_pipeline.governance import load_governance
    from partner_pipeline.settings import load_settings
    from partner_pipeline.storage import s3_client
    from partner_pipeline_dev import synth
    from partner_pipeline_dev.bench_floor import measure_limits, run_floor
    from partner_pipeline_dev.local_audience_api import AudienceApi
    from partner_pipeline_dev.local_postgres import local_postgres
    from partner_pipeline_dev.local_s3 import local_s3

    profiles = profiles or rows
    base = PROJECT_ROOT / "data" if (PROJECT_ROOT / "data").exists() else None
    work = Path(tempfile.mkdtemp(prefix=f"bench-{rows}-", dir=base))
    os.environ.update({"PIPELINE_DATA_DIR": str(work / "data"), "AIRFLOW_HOME": str(work / "airflow"), **WAREHOUSES[warehouse]})
    for variable in ("PIPELINE_LAKE_CATALOG", "PIPELINE_LAKE_CATALOG_PASSWORD", "PIPELINE_LAKE_DATA_PATH"):
        os.environ.pop(variable, None)
    settings = load_settings()
    agreements = load_agreements(settings.agreements_dir)
    governance = load_governance(settings.governance_dir, agreements)
    # one drop per agreement (Acme's bank data, Globex's loyalty data) of rows / 2 rows each: every
    # shipped segment reads one of them, so each has members, and the prospect segment an audience
    partners = [agreements[p] for p in BENCH_PARTNERS]
    buckets = [settings.landing_bucket, settings.quarantine_bucket, settings.first_party_bucket, settings.outbox_bucket,
               settings.activation_bucket]
    with contextlib.ExitStack() as stack:
        # no vacuum sweep while measuring: rewriting GBs of volumes is the embedded S3 server's housekeeping,
        # not the night's work (a team's object store does its own); it reclaims them when it stops
        server = stack.enter_context(local_s3(work / "s3", buckets, sweep_seconds=None))
        api = stack.enter_context(AudienceApi(token="bench", hash_profile="uid2"))
        catalog = None
        if warehouse == "lake-postgres":  # not under work: PostgreSQL runs as nobody when root, who must reach it
            catalog_dir = Path(tempfile.mkdtemp(prefix="bench-postgres-"))
            stack.callback(shutil.rmtree, catalog_dir, ignore_errors=True)
            catalog = stack.enter_context(local_postgres(catalog_dir))
            os.environ.update(catalog.env())
        os.environ.update(server.env())
        os.environ["AIRFLOW_CONN_PERSONALIZATION_API"] = json.dumps({"conn_type": "http", "host": api.url, "password": api.token})
        for seeded in agreements.values():  # the seed sets are part of the night
            if seeded.seed_set is not None:
                os.environ[f"AIRFLOW_VAR_{seeded.seed_set.secret_variable.upper()}"] = SEED_KEY
        client = s3_client(server.endpoint_url, server.access_key, server.secret_key)
        started = time.perf_counter()
        synth.generate_profiles(work / "synth", settings.first_party_bucket, DAY, profiles, 42)
        truths = {a.partner_id: synth.write_drop(work / "synth", settings.landing_bucket,
                                                 synth.DropSpec(a, DAY, rows // len(partners), args.format, args.files, args.bad_row_share,
                                                                ambiguous_share=AMBIGUOUS_SHARE),
                                                 profiles_seed=42, n_profiles=profiles, seed=1)
                  for a in partners}
        synth.upload_tree(client, work / "synth")
        # the night starts, as its floor later does, on a machine done writing: the generator's files
        # (gigabytes at 10M) are gone and their writes flushed, not written back while the night runs
        shutil.rmtree(work / "synth")
        os.sync()
        truth_seeds = {a.partner_id: synth.expected_seed_set(a, 42, profiles).num_rows for a in partners if a.seed_set}
        size = f"{rows:,} rows x {profiles:,} profiles"
        print(f"{size}: generated and uploaded in {time.perf_counter() - started:.0f}s; running the night ...", flush=True)

        wall, peak, memory, measured = _night(DAY, catalog, work)

        print(f"{size}: night {wall:.0f}s", flush=True)
        floor_result, floor_peak, later = {}, 0, {}
        if with_floor:
            def floor():
                floor_result.update(run_floor(client, settings.landing_bucket, settings.first_party_bucket, partners,
                                              DAY.isoformat(), synth.load_segments(), synth.load_segments(kind="prospect"),
                                              governance.destinations,
                                              {p: a.attributes for p, a in agreements.items()}, SEED_KEY.encode(), work / "floor"))

            print(f"{size}: running the floor ...", flush=True)
            floor_thread = threading.Thread(target=floor)
            memory_floor = TreeMemory(os.getpid())
            floor_thread.start()
            floor_thread.join()
            floor_peak = memory_floor.stop()
            if not floor_result:
                raise RuntimeError(f"the floor failed (work directory kept: {work})")
            if rows > CALIBRATION_ROWS:
                later = _later_nights(rows, profiles, args, client, settings, partners, catalog, work)
    result = _checked_night(rows, profiles, warehouse, args, wall, peak, memory, measured, truths, truth_seeds)
    if with_floor:
        floor = _checked_floor(floor_result, floor_peak, measure_limits(work / "floor", rows), later, wall, measured, truths,
                               truth_seeds)
        mismatches = result["mismatches"] | floor.pop("mismatches")
        result |= floor | {"mismatches": mismatches, "matches_ground_truth": not mismatches}
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _checked_floor(floor_result: dict, floor_peak: int, limits: dict, later: dict, wall: float, measured: dict, truths: dict,
                   truth_seeds: dict) -> dict:
    """The floor's figures and the later nights, and their checks: the floor against the ground truth,
    the night against the floor, the later nights' own (_later_nights)."""
    found = floor_result["found"]
    checks = {}
    for partner_id, truth in truths.items():
        floor_found, expected = found["partners"][partner_id], truth["expected_matches"]
        checks |= {
            f"{partner_id}: floor valid rows": (floor_found["rows_valid"], truth["rows_valid"]),
            f"{partner_id}: floor rows per rule": (floor_found["invalid_by_rule"], truth["invalid_by_rule"]),
            f"{partner_id}: floor matches (email, phone, ambiguous, none)": (
                tuple(floor_found["matches"].get(k, 0) for k in ("email", "phone", "ambiguous", "none")),
                (expected["by_email"], expected["by_phone"], expected["ambiguous"], expected["unmatched"])),
        }
    checks |= {
        "segment sizes, pipeline vs floor": (measured["published"]["segment_sizes"], found["segments"]),
        "seeds sent, floor": (found["seeds_sent"], truth_seeds),
        "members sent per destination and segment, pipeline vs floor": (
            {f"{r['destination_id']}/{r['segment']}": r.get("adds") for r in measured["activation"]}, found["exports"]),
    }
    for night in later.values():
        checks |= night.pop("checks")
    return {
        "floor": {"wall_seconds": round(floor_result["wall_seconds"], 1), "peak_rss_mb": round(floor_peak / 2**20),
                  "stages": floor_result["stages"], "machine_limits": limits},
        "ratio_pipeline_to_floor": round(wall / floor_result["wall_seconds"], 2),
        "later_nights": later,
        "mismatches": {name: {"found": a, "expected": b} for name, (a, b) in checks.items() if a != b},
    }


def _machine() -> dict:
    """Where and when a result was measured."""
    return {"machine": f"{os.cpu_count()} cores, Python {platform.python_version()}", "measured_on": dt.date.today().isoformat()}


def _checked_night(rows: int, profiles: int, warehouse: str, args, wall: float, peak: int, memory: TreeMemory,
                   measured: dict, truths: dict, truth_seeds: dict) -> dict:
    """The first night's result, checked against the generator's ground truth (per drop: valid rows, rows
    per rule, matches; seeds sent; every segment sends members somewhere)."""
    outcomes = {o.partner_id: o for o in map(DropOutcome.from_xcom, measured["outcomes"])}
    reports = {r["partner_id"]: r for r in measured["published"]["match_report"]}
    checks = {}
    for partner_id, truth in truths.items():
        outcome, report, expected = outcomes[partner_id], reports[partner_id], truth["expected_matches"]
        checks |= {
            f"{partner_id}: pipeline valid rows": (outcome.rows_valid, truth["rows_valid"]),
            f"{partner_id}: pipeline rows per rule": (outcome.failures_by_rule, truth["invalid_by_rule"]),
            f"{partner_id}: pipeline matches (email, phone, ambiguous, none)": (
                (report["matched_by_email"], report["matched_by_phone"], report["ambiguous"], report["unmatched"]),
                (expected["by_email"], expected["by_phone"], expected["ambiguous"], expected["unmatched"])),
        }
    sent = {f"{r['destination_id']}/{r['segment']}": r.get("adds") or 0 for r in measured["activation"]}
    checks |= {
        "seeds sent, pipeline": ({r["partner_id"]: r["seeds_sent"] for r in measured["seed_sets"]}, truth_seeds),
        # the data exercises every segment: each sends members somewhere
        "segments sending nobody": (sorted({key.split("/")[1] for key in sent} - {key.split("/")[1] for key, n in sent.items() if n}), []),
    }
    mismatches = {name: {"found": a, "expected": b} for name, (a, b) in checks.items() if a != b}
    return {
        "warehouse": warehouse, "rows": rows, "profiles": profiles, "drops": {p: truth["rows_total"] for p, truth in truths.items()},
        "ambiguous_share": AMBIGUOUS_SHARE, "format": args.format, "files": args.files, "bad_row_share": args.bad_row_share,
        "pipeline": {"wall_seconds": round(wall, 1), "peak_tree_rss_mb": round(peak / 2**20),
                     "rows_per_second": round(rows / wall),
                     "stages": {t: round(measured["timings"].get(t, 0), 1) for t in TASKS},
                     "peak_tree_rss_mb_by_stage": stage_peaks(memory.samples, measured["spans"]),
                     "ingest_steps": {p: o.seconds for p, o in outcomes.items()},
                     "slowest_dbt_nodes_seconds": measured["transform"]["slowest_dbt_nodes_seconds"]},
        "floor": None, "ratio_pipeline_to_floor": None, "later_nights": {},
        "segment_sizes": measured["published"]["segment_sizes"],
        "matches_ground_truth": not mismatches, "mismatches": mismatches,
        **_machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000],
                        help="partner rows per night (as many profiles); default 1M and 10M")
    parser.add_argument("--format", default="csv.gz", choices=["csv", "csv.gz", "parquet"])
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--bad-row-share", type=float, default=0.01)
    parser.add_argument("--warehouse", nargs="+", choices=list(WAREHOUSES), default=["lake", "lake-postgres"],
                        help="where the night keeps its warehouse: the embedded lake, the lake on a PostgreSQL catalog, the DuckDB file")
    parser.add_argument("--profiles", type=int, nargs="+",
                        help="the scale curve (make bench-scale): one night at each of these profile counts against the "
                             "first --rows partner rows, no floor; writes scale-<warehouse>-<rows>.json and .svg")
    parser.add_argument("--keep", action="store_true", help="keep each work directory (S3 store, warehouse)")
    parser.add_argument("--results", type=Path, default=PROJECT_ROOT / "bench" / "results", help="where night-<warehouse>-<rows>.json go")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--day", type=dt.date.fromisoformat, default=DAY, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.day)
        return 0

    if args.profiles:
        curves = [bench_scale(warehouse, args) for warehouse in args.warehouse]
        return 0 if all(c["matches_ground_truth"] and c["targets"]["every size completes"]["met"] for c in curves) else 1
    parse = dag_parse_seconds()
    results = []
    for warehouse in args.warehouse:
        results += bench_warehouse(warehouse, args, parse)
    print("\n| warehouse | rows x profiles | pipeline | floor | ratio | target 1.5 x floor + 60 s | peak tree RSS | ground truth |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        target = r["targets"]["wall <= 1.5 x floor + 60 s"]
        print(f"| {r['warehouse']} | {r['rows']:,} | {r['pipeline']['wall_seconds']} s | {r['floor']['wall_seconds']} s | "
              f"{r['ratio_pipeline_to_floor']} | {target['limit']} s {'met' if target['met'] else 'MISSED'} | "
              f"{r['pipeline']['peak_tree_rss_mb']:,} MB | {'matches' if r['matches_ground_truth'] else 'MISMATCH'} |")
    for r in results:
        print(f"\n{r['warehouse']}, {r['rows']:,} rows, pipeline stages (s): {r['pipeline']['stages']}\n  floor stages (s): "
              f"{r['floor']['stages']}\n  the machine on the floor's inputs: {r['floor']['machine_limits']}"
              f"\n  slowest dbt nodes (s): {r['pipeline']['slowest_dbt_nodes_seconds']}")
        for name, night in r["later_nights"].items():
            print(f"  the {name} night: {night['wall_seconds']} s, peak {night['peak_tree_rss_mb']:,} MB, stages (s): {night['stages']}"
                  f"\n    slowest dbt nodes (s): {night['slowest_dbt_nodes_seconds']}")
        for name in ("second night <= 60 % of the first", "a night with no change <= 30 s"):
            if name in r["targets"]:
                print(f"  {name}: {r['targets'][name]['measured']} s {'met' if r['targets'][name]['met'] else 'MISSED'}")
        if r["mismatches"]:
            print(f"  MISMATCHES: {json.dumps(r['mismatches'], default=str)}")
    print(f"\nDAG parse (s): {parse}; fixed cost (1,000-row night): "
          f"{ {r['warehouse']: r['targets']['fixed_cost_seconds (a 1,000-row night)'] for r in results} }")
    return 0 if all(r["matches_ground_truth"] for r in results) else 1


def bench_scale(warehouse: str, args) -> dict:
    """Issue 18's scale curve: the first night at each of --profiles against the same --rows (the first),
    each checked against its ground truth: wall time, peak memory, the stages; whether every size completes,
    whether the cost of each further million profiles stays that of the first step's (linear growth), and
    the peak within 4 GB. A night that fails is a point of the curve too (its error; its work directory
    kept), and the sizes after it still run. The results are written after each size."""
    rows, points = args.rows[0], []
    for profiles in sorted(args.profiles):
        try:
            point = bench_one(rows, args, warehouse, profiles=profiles, with_floor=False)
        except NightFailed as exc:
            print(f"{rows:,} rows x {profiles:,} profiles: {exc}", flush=True)
            points.append({"profiles": profiles, "failed": str(exc)})
        else:
            points.append({key: point[key] for key in ("profiles", "pipeline", "segment_sizes", "matches_ground_truth", "mismatches")})
        result = _scale_result(warehouse, rows, points)
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / f"scale-{warehouse}-{rows}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (args.results / f"scale-{warehouse}-{rows}.svg").write_text(scale_svg(result))
    print(f"\n| {warehouse}: profiles x {rows:,} rows | night | transform | peak tree RSS | ground truth |\n| --- | --- | --- | --- | --- |")
    for point in points:
        if "failed" in point:
            print(f"| {point['profiles']:,} | FAILED | | | |")
            continue
        print(f"| {point['profiles']:,} | {point['pipeline']['wall_seconds']} s | {point['pipeline']['stages']['transform']} s | "
              f"{point['pipeline']['peak_tree_rss_mb']:,} MB | {'matches' if point['matches_ground_truth'] else 'MISMATCH'} |")
    for name, target in result["targets"].items():
        print(f"{name}: {target['measured']} {'not judged' if target['met'] is None else 'met' if target['met'] else 'MISSED'}")
    return result


def _scale_result(warehouse: str, rows: int, points: list[dict]) -> dict:
    done = [p for p in points if "failed" not in p]
    steps = [{"from": a["profiles"], "to": b["profiles"],
              "seconds_per_million_profiles": round((b["pipeline"]["wall_seconds"] - a["pipeline"]["wall_seconds"])
                                                    / ((b["profiles"] - a["profiles"]) / 1e6), 2)}
             for a, b in zip(done, done[1:])]
    peak = max((p["pipeline"]["peak_tree_rss_mb"] for p in done), default=None)
    failed = [p["profiles"] for p in points if "failed" in p]
    return {
        "warehouse": warehouse, "rows": rows, "points": points, "steps": steps,
        "targets": {
            "every size completes": {"measured": {"failed": failed}, "met": not failed},
            "peak memory <= 4 GB at every size": {"measured": peak, "met": not failed and peak is not None and peak <= 4096},
            # the same 10 % tolerance as make bench's linear check on rows
            "linear: each step's seconds per million profiles <= 1.1 x the first step's": {
                "measured": [s["seconds_per_million_profiles"] for s in steps],
                # one size completed makes no step: nothing to judge (None), unless a size failed
                "met": (not failed and all(s["seconds_per_million_profiles"] <= 1.1 * steps[0]["seconds_per_million_profiles"]
                                           for s in steps)) if steps or failed else None},
        },
        "matches_ground_truth": bool(done) and all(p["matches_ground_truth"] for p in done),
        **_machine(),
    }


def scale_svg(result: dict) -> str:
    """The scale curve as a self-contained SVG (no plotting library): the night's and its transform's wall
    time, and the peak memory against the 4 GB limit, over the profile count."""
    every_x = [p["profiles"] / 1e6 for p in result["points"]]
    failed = [p["profiles"] / 1e6 for p in result["points"] if "failed" in p]
    points = [p for p in result["points"] if "failed" not in p]
    xs = [p["profiles"] / 1e6 for p in points]
    series = [("night (s)", [p["pipeline"]["wall_seconds"] for p in points], "#1f6feb", None),
              ("transform, dbt build (s)", [p["pipeline"]["stages"]["transform"] for p in points], "#8250df", None),
              ("peak memory (MB)", [p["pipeline"]["peak_tree_rss_mb"] for p in points], "#cf222e", 4096)]
    width, height, left, top, plot_w, plot_h = 760, 330, 60, 40, 280, 220
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
             f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13">{result["warehouse"]}: one night, '
             f'{result["rows"]:,} partner rows, by profiles (make bench-scale, {result["measured_on"]})</text>']
    for panel, (panel_series, label) in enumerate(((series[:2], "seconds"), (series[2:], "MB"))):
        x0 = left + panel * (plot_w + 100)
        highest = max(max(max(values, default=1), limit or 0) for _, values, _, limit in panel_series)
        # four ticks on a round step (1, 2 or 5 times a power of ten) that reach above the highest value
        step = min(m * 10 ** e for e in range(7) for m in (1, 2, 5) if 4 * m * 10 ** e >= highest * 1.05)
        y_max = 4 * step
        x_max = max(every_x) * 1.05

        def at(x, y, x0=x0, x_max=x_max, y_max=y_max):
            return x0 + x / x_max * plot_w, top + plot_h - y / y_max * plot_h

        parts.append(f'<rect x="{x0}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>')
        for tick in range(5):
            value = step * tick
            _, y = at(0, value)
            parts.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end">{value:,.0f}</text>')
        for x in every_x:
            px, _ = at(x, 0)
            parts.append(f'<text x="{px:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{x:g}M</text>')
        for x in failed:  # a night that failed: a cross on the axis (its error is in the JSON)
            px, py = at(x, 0)
            parts.append(f'<path d="M{px - 5:.1f},{py - 13:.1f} l10,10 m0,-10 l-10,10" stroke="#000" stroke-width="2" class="failed"/>'
                         f'<text x="{px:.1f}" y="{py - 18:.1f}" text-anchor="middle">failed</text>')
        parts.append(f'<text x="{x0 + plot_w / 2}" y="{top + plot_h + 30}" text-anchor="middle">profiles</text>')
        parts.append(f'<text x="{x0 - 48}" y="{top + plot_h / 2}" transform="rotate(-90 {x0 - 48} {top + plot_h / 2})" '
                     f'text-anchor="middle">{label}</text>')
        for index, (name, values, colour, limit) in enumerate(panel_series):
            if limit:
                (ax, ay), (bx, _) = at(0, limit), at(x_max, limit)
                parts.append(f'<line x1="{ax:.1f}" y1="{ay:.1f}" x2="{bx:.1f}" y2="{ay:.1f}" stroke="{colour}" stroke-dasharray="4 3"/>'
                             f'<text x="{bx - 2:.1f}" y="{ay - 4:.1f}" text-anchor="end" fill="{colour}">limit {limit:,} MB</text>')
            line = " ".join(f"{px:.1f},{py:.1f}" for px, py in (at(x, v) for x, v in zip(xs, values)))
            parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
            for x, v in zip(xs, values):
                px, py = at(x, v)
                anchor, dx = ("end", -5) if x == max(every_x) else ("start", 5)  # the last label inside the panel
                parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>'
                             f'<text x="{px + dx:.1f}" y="{py - 5:.1f}" text-anchor="{anchor}" fill="{colour}">{v:,.0f}</text>')
            parts.append(f'<text x="{x0 + 6}" y="{top + 14 + 14 * index}" fill="{colour}">{name}</text>')
    parts.append("</svg>\n")
    return "\n".join(parts)


class NightFailed(RuntimeError):
    """A night's child process failed (its work directory is kept)."""


def _night(day: dt.date, catalog, work: Path) -> tuple[float, int, TreeMemory, dict]:
    """One date's night in a child process: its wall time, peak tree RSS (with the catalog server's),
    the samples, and what the child reported."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "partner_pipeline_dev.bench", "--child", f"bench-{day}", "--day", day.isoformat()],
                             env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = TreeMemory(child.pid, *([catalog.pid] if catalog else []))
    stdout, stderr = child.communicate()
    wall = time.perf_counter() - started
    peak = memory.stop()
    if child.returncode != 0:
        raise NightFailed(f"the night of {day} failed (work directory kept: {work}):\n{stderr[-5000:]}")
    return wall, peak, memory, json.loads(stdout.strip().splitlines()[-1])


def _changed_snapshot(client, bucket: str, work: Path) -> int:
    """The second night's snapshot: the first one with the email of one profile in CHANGED_PROFILES
    upper-cased (a change the pipeline sees, that normalizes as before), dated SECOND_DAY; returns how
    many emails changed."""
    import duckdb

    from partner_pipeline.sqltext import quote_path
    from partner_pipeline.storage import download_with_sha256
    from partner_pipeline_dev import synth

    first = work / "snapshot-first.csv.gz"
    download_with_sha256(client, bucket, f"profiles/{DAY.isoformat()}/profiles-000.csv.gz", first)
    folder = work / "synth" / bucket / "profiles" / SECOND_DAY.isoformat()
    folder.mkdir(parents=True)
    changed = f"email IS NOT NULL AND upper(email) <> email AND hash(profile_id) % {CHANGED_PROFILES} = 0"
    with duckdb.connect() as con:
        con.execute(f"""COPY (SELECT * REPLACE (CASE WHEN {changed} THEN upper(email) ELSE email END AS email)
                              FROM read_csv(?, header = true, all_varchar = true))
                        TO {quote_path(folder / "profiles-000.csv.gz")} (HEADER, COMPRESSION gzip)""", [str(first)])
        count = con.execute(f"SELECT count(*) FROM read_csv(?, header = true, all_varchar = true) WHERE {changed}", [str(first)]).fetchone()[0]
    (folder / "_SUCCESS").write_bytes(b"")
    first.unlink()
    synth.upload_tree(client, work / "synth")
    shutil.rmtree(work / "synth")
    return count


def _later_nights(rows: int, profiles: int, args, client, settings, partners, catalog, work: Path) -> dict:
    """The nights after the first, on the same lake (module docstring): each one's wall time, peak
    memory, stages and slowest dbt nodes; the second one's drops checked against their ground truth
    (valid rows, rows per rule; matched, ambiguous and unmatched adding up to the valid rows: the
    counts themselves are not compared, as one partner person's records across the two drops can be
    ambiguous where each drop alone is not)."""
    from partner_pipeline_dev import synth

    changed = _changed_snapshot(client, settings.first_party_bucket, work)
    truths = {a.partner_id: synth.write_drop(work / "synth", settings.landing_bucket,
                                             synth.DropSpec(a, SECOND_DAY, rows // len(partners), args.format, args.files,
                                                            args.bad_row_share, ambiguous_share=AMBIGUOUS_SHARE),
                                             profiles_seed=42, n_profiles=profiles, seed=2)
              for a in partners}
    synth.upload_tree(client, work / "synth")
    shutil.rmtree(work / "synth")
    os.sync()
    nights = {}
    for name, day in (("second", SECOND_DAY), ("no change", QUIET_DAY)):
        print(f"{rows:,} rows: the {name} night ({day}) ...", flush=True)
        wall, peak, _, measured = _night(day, catalog, work)
        nights[name] = {"date": day.isoformat(), "wall_seconds": round(wall, 1), "peak_tree_rss_mb": round(peak / 2**20),
                        "stages": {t: round(measured["timings"].get(t, 0), 1) for t in TASKS},
                        "slowest_dbt_nodes_seconds": measured["transform"]["slowest_dbt_nodes_seconds"], "checks": {}}
        outcomes = {o.partner_id: o for o in map(DropOutcome.from_xcom, measured["outcomes"])}
        reports = {r["partner_id"]: r for r in measured["published"]["match_report"]}
        if day == SECOND_DAY:
            nights[name] |= {"profiles_changed": changed, "drops": {p: truth["rows_total"] for p, truth in truths.items()}}
            for partner_id, truth in truths.items():
                outcome, report = outcomes[partner_id], reports[partner_id]
                nights[name]["checks"] |= {
                    f"second night, {partner_id}: pipeline valid rows": (outcome.rows_valid, truth["rows_valid"]),
                    f"second night, {partner_id}: pipeline rows per rule": (outcome.failures_by_rule, truth["invalid_by_rule"]),
                    f"second night, {partner_id}: matched + ambiguous + unmatched = valid rows": (
                        report["matched_by_email"] + report["matched_by_phone"] + report["ambiguous"] + report["unmatched"],
                        truth["rows_valid"]),
                }
        else:
            nights[name]["checks"]["no-change night: drops ingested"] = (len(outcomes), 0)
    return nights


def bench_warehouse(warehouse: str, args, parse: dict) -> list[dict]:
    """Every size of --rows on one warehouse configuration, after a 1,000-row calibration night."""
    fixed = bench_one(CALIBRATION_ROWS, args, warehouse)["pipeline"]["wall_seconds"]
    results = []
    for rows in args.rows:
        result = bench_one(rows, args, warehouse)
        pipeline, floor = result["pipeline"]["wall_seconds"], result["floor"]["wall_seconds"]
        result["targets"] = {
            "fixed_cost_seconds (a 1,000-row night)": fixed,
            "wall <= 1.5 x floor + 60 s": {"limit": round(1.5 * floor + 60, 1), "measured": pipeline, "met": pipeline <= 1.5 * floor + 60},
            "peak memory <= 4 GB": {"measured_mb": result["pipeline"]["peak_tree_rss_mb"], "met": result["pipeline"]["peak_tree_rss_mb"] <= 4096},
            "DAG parse < 1 s per file": {"measured": parse, "met": all(v < 1 for v in parse.values())},
        }
        if result["later_nights"]:
            second, quiet = result["later_nights"]["second"]["wall_seconds"], result["later_nights"]["no change"]["wall_seconds"]
            result["targets"] |= {
                "second night <= 60 % of the first": {"limit": round(0.6 * pipeline, 1), "measured": second, "met": second <= 0.6 * pipeline},
                "a night with no change <= 30 s": {"measured": quiet, "met": quiet <= 30},
            }
        results.append(result)
        out = args.results / f"night-{warehouse}-{rows}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if len(results) >= 2:
        small, large = results[0], results[-1]
        growth = (large["pipeline"]["wall_seconds"] - fixed) / max(small["pipeline"]["wall_seconds"] - fixed, 1e-9)
        size = large["rows"] / small["rows"]
        large["targets"][f"linear: variable cost x{size:g} rows <= ~x{size:g}"] = {"measured": round(growth, 2),
                                                                                 "met": growth <= size * 1.1}
        (args.results / f"night-{warehouse}-{large['rows']}.json").write_text(json.dumps(large, indent=2, default=str) + "\n")
    return results


if __name__ == "__main__":
    sys.exit(main())
