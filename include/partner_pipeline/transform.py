"""The dbt project on the warehouse, and the read-only copy of the marts analysts open.

dbt runs as one `dbt build` in a child process: DuckDB takes one writer at a time, so the
models of a run are built by one process that holds the file and lets go of it when it exits,
while the warehouse pool keeps every other writer out (see README, "Why one dbt build task").
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb

from partner_pipeline import lake
from partner_pipeline.settings import PROJECT_ROOT, Settings
from partner_pipeline.sqltext import quote_configured_name, quote_ident
from partner_pipeline.warehouse import attach_read_only, warehouse

log = logging.getLogger(__name__)
DBT_PROJECT = PROJECT_ROOT / "dbt_project"


class ModelBuildFailed(RuntimeError):
    pass


def run_dbt(settings: Settings, command: list[str], target: Path, **env: str) -> subprocess.CompletedProcess:
    """One dbt command on the warehouse of `settings` (its kind is the profile's target: the lake, or
    the warehouse file and its marts file), with `env` added to dbt's environment; logs go beside `target`."""
    env = {**os.environ, "PIPELINE_WAREHOUSE": settings.warehouse_kind, "PIPELINE_WAREHOUSE_PATH": str(settings.warehouse_path.resolve()),
           "PIPELINE_MARTS_PATH": str(settings.marts_path.resolve()), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", **env}
    return subprocess.run([str(Path(sys.executable).with_name("dbt")), *command, "--project-dir", str(DBT_PROJECT),
                           "--profiles-dir", str(DBT_PROJECT), "--target-path", str(target), "--log-path", str(target.parent / "logs")],
                          env=env, capture_output=True, text=True)


def build_models(settings: Settings, day: dt.date, run_id: str = "", retention_date: dt.date | None = None,
                 full_refresh: bool = False) -> dict:
    """`dbt build` (models and their tests) for the run's date; raises naming every failed node.

    On the file, the marts are built into a fresh file that replaces the marts file only when the
    whole build passed: a failed build leaves the last good marts, and no block of an earlier night
    (say, of a person erased since) survives in the file that publishing copies. On the lake, each
    model commits as it is built; analysts read the last published snapshot meanwhile.

    The run's date, retention date and id reach dbt in the environment (macros run_date() and
    retention_date()), which lets dbt's partial parsing skip the files that do not read them.
    full_refresh: `--full-refresh`, the incremental models rebuilt from scratch (int_profile_hashes;
    segment_size_history keeps its history, full_refresh=false)."""
    building = settings.marts_path.with_name(settings.marts_path.name + ".building")
    building.unlink(missing_ok=True)
    Path(str(building) + ".wal").unlink(missing_ok=True)
    target = settings.data_dir / "dbt" / "target"
    (target / "run_results.json").unlink(missing_ok=True)
    # unit tests check the SQL's logic, not the night's data: make test runs them (tests/test_transform.py)
    with lake.writer_turn(settings) if settings.warehouse_kind == "lake" else contextlib.nullcontext():
        command = ["build", "--exclude-resource-type", "unit_test", *(["--full-refresh"] if full_refresh else [])]
        result = run_dbt(dataclasses.replace(settings, marts_path=building), command, target,
                         PIPELINE_RUN_DATE=day.isoformat(),
                         PIPELINE_RETENTION_DATE=(retention_date or day).isoformat(), PIPELINE_RUN_ID=run_id)
    log.info("dbt build:\n%s", result.stdout[-20000:])
    run_results = json.loads((target / "run_results.json").read_text()) if (target / "run_results.json").exists() else {"results": []}
    failed = [f"{r['unique_id']}: {r['status']} {r.get('message') or ''}".strip()
              for r in run_results["results"] if r["status"] in ("error", "fail", "runtime error")]
    if result.returncode != 0 or failed:
        detail = "\n  ".join(failed) if failed else (result.stdout + result.stderr)[-5000:]
        raise ModelBuildFailed(f"dbt build failed (log: {target.parent / 'logs'}):\n  {detail}")
    if settings.warehouse_kind == "file":
        os.replace(building, settings.marts_path)
    return {r["unique_id"]: round(r["execution_time"], 2) for r in run_results["results"]}


def publish_for_analysts(settings: Settings, day: dt.date, run_id: str) -> str:
    """Publish tonight's marts (and the activation log and sync state, views the marts define) to
    analysts; returns where. On the file: a copy of the marts file (write_published_copy). On the
    lake: nothing is copied; the night's small files are merged (lake.compact_small_files), the lake's
    snapshot then is recorded in audit.publications, and analysts attach the lake at the last one
    recorded (published_marts), so a run that writes meanwhile is never seen half done; snapshots
    older than PIPELINE_LAKE_SNAPSHOT_DAYS expire."""
    if settings.warehouse_kind == "file":
        published = write_published_copy(settings)
        with warehouse(settings) as con:
            con.execute("INSERT INTO audit.publications VALUES (?, ?, NULL, now())", [run_id, day])
        return str(published)
    with warehouse(settings) as con:
        lake.compact_small_files(con)
        snapshot = con.execute(f"SELECT id FROM {lake.CATALOG}.current_snapshot()").fetchone()[0]
        con.execute("INSERT INTO audit.publications VALUES (?, ?, ?, now())", [run_id, day, snapshot])
        lake.keep_recent_snapshots(con, settings.lake_snapshot_days)
    return f"lake snapshot {snapshot}"


def write_published_copy(settings: Settings) -> Path:
    """Copy the marts file, add the activation log, and swap the copy in atomically.

    Analysts open the published copy read-only: a run never waits for them, and they never see a
    half-built state (readers already open keep their snapshot; new readers get the new one).
    The marts file holds only what dbt built tonight (see build_models), so a file copy publishes
    exactly the marts; its views read the warehouse, which analysts do not open, so they are left out.
    """
    published = settings.published_path
    published.parent.mkdir(parents=True, exist_ok=True)
    building = published.with_name(published.name + ".building")
    building.unlink(missing_ok=True)
    with warehouse(settings) as con:
        con.execute("CHECKPOINT marts")  # the file alone is then the whole state (no write-ahead log to miss)
    shutil.copyfile(settings.marts_path, building)
    with duckdb.connect(str(building), config=settings.duckdb_config(settings.data_dir / "tmp")) as con:
        # the views (activation_log, activation_syncs) read the warehouse, which analysts do not open: each
        # becomes a table of what it shows now, the warehouse attached under the name dbt gave it
        attach_read_only(con, settings, settings.warehouse_path.stem)
        for (view,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal AND database_name = current_database()").fetchall():
            con.execute(f"CREATE TABLE {quote_ident(view + '__published')} AS SELECT * FROM {quote_ident(view)}")
            con.execute(f"DROP VIEW {quote_ident(view)}")
            con.execute(f"ALTER TABLE {quote_ident(view + '__published')} RENAME TO {quote_ident(view)}")
        con.execute(f"DETACH {quote_configured_name(settings.warehouse_path.stem)}")
        con.execute("CHECKPOINT")
    os.replace(building, published)
    log.info("published the marts and the activation log to %s", published)
    return published


@contextlib.contextmanager
def published_marts(settings: Settings, snapshot: int | None = None) -> Iterator[duckdb.DuckDBPyConnection | None]:
    """A read-only connection on the marts as last published, their tables unqualified (what analysts
    read); None before the first publication. On the lake: attached at the snapshot last recorded
    in audit.publications, or, if an erasure expired it, at the oldest snapshot kept after it (the
    lake as the erasure left it: built marts, without the erased); or at `snapshot`, a kept one."""
    config = settings.duckdb_config(settings.data_dir / "tmp")
    if settings.warehouse_kind == "lake":
        snapshot = published_snapshot(settings) if snapshot is None else snapshot
        if snapshot is None:
            yield None
            return
        con = duckdb.connect(config=config)
        lake.attach(con, settings, read_only=True, snapshot=snapshot)
        con.execute(f"USE {lake.CATALOG}.marts")
    elif settings.published_path.exists():
        con = duckdb.connect(str(settings.published_path), read_only=True, config=config)
    else:
        yield None
        return
    try:
        yield con
    finally:
        con.close()


def published_snapshot(settings: Settings) -> int | None:
    """The lake snapshot analysts read: the last published, or the first kept after it."""
    with warehouse(settings, read_only=True) as con:
        return con.execute(f"""
            SELECT min(s.snapshot_id) FROM {lake.CATALOG}.snapshots() s
            WHERE s.snapshot_id >= (SELECT max(snapshot_id) FROM audit.publications)""").fetchone()[0]


def published_summary(con: duckdb.DuckDBPyConnection, day: dt.date) -> dict:
    """What a run produced, read back from the published marts (published_marts): the date's match
    report and segment sizes."""
    cursor = con.execute("SELECT * FROM match_report WHERE drop_date = ? ORDER BY partner_id", [day])
    names = [d[0] for d in cursor.description]
    report = [dict(zip(names, row)) for row in cursor.fetchall()]
    # our customers' segments; prospect segments (segment_kind prospect) count a partner's prospects, not profiles
    segments = dict(con.execute("SELECT segment_name, members FROM segments WHERE segment_kind = 'customer' "
                                "ORDER BY segment_name").fetchall())
    enriched = con.execute("SELECT count(*) FROM enriched_profiles WHERE len(enriched_by_partners) > 0").fetchone()[0]
    cursor = con.execute("""
        -- per destination and segment, what the last sync for this date sent
        SELECT s.destination_id, s.segment_name, s.members_held, s.last_synced_at,
               coalesce(sum(l.adds) FILTER (WHERE l.status = 'sent'), 0) AS adds,
               coalesce(sum(l.removes) FILTER (WHERE l.status = 'sent'), 0) AS removes,
               coalesce(arg_max(l.status, l.log_id) FILTER (WHERE l.status IN ('sent', 'blocked', 'failed', 'rejected', 'withheld')), 'unchanged') AS status
        FROM activation_syncs s
        LEFT JOIN activation_log l ON l.destination_id = s.destination_id AND l.segment_name = s.segment_name
             AND l.run_id = s.last_run_id
        WHERE s.last_run_date = ?
        GROUP BY ALL ORDER BY 1, 2""", [day])
    names = [d[0] for d in cursor.description]
    activation = [dict(zip(names, row)) for row in cursor.fetchall()]
    return {"match_report": report, "segment_sizes": segments, "profiles_enriched": enriched, "activation": activation}
