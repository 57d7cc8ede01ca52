"""What analysts open: the DuckDB CLI on the published marts, read-only.

    python -m partner_pipeline.analysts [--night YYYY-MM-DD] [-c SQL]
    python -m partner_pipeline.analysts [--night YYYY-MM-DD] --export FILE.duckdb

On the lake it attaches the lake read-only at the snapshot of the last published night (or of
--night, while that night's snapshot is kept), with the marts schema in use; a run writing
meanwhile is never seen. On the file warehouse it opens the published copy. The CLI's init
script holds no setting: each value the attach binds is read by getenv() from the CLI's own
environment, so no key or password is written to disk or spliced into SQL.
--export writes the same marts into one DuckDB file, for a laptop that cannot reach the lake.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from partner_pipeline import lake
from partner_pipeline.settings import load_settings
from partner_pipeline.sqltext import quote_ident, quote_path
from partner_pipeline.transform import published_marts, published_snapshot
from partner_pipeline.warehouse import warehouse


def cli_script(settings, snapshot: int) -> tuple[str, dict[str, str]]:
    """The CLI init script that attaches the lake at `snapshot`, and the environment it reads its values from."""
    # the attach's own results (Success) silenced; a failed statement ends the session
    lines = [".bail on", ".output /dev/null", *(f"LOAD {quote_path(path)};" for path in lake.extension_files().values())]
    env: dict[str, str] = {}
    for sql, values in lake.attach_statements(settings, read_only=True, snapshot=snapshot):
        head, *rest = sql.split("?")  # the statements' only question marks are their parameters
        text = head
        for value, after in zip(values, rest, strict=True):
            name = f"PIPELINE_ANALYST_VALUE_{len(env)}"
            env[name] = str(value).lower() if isinstance(value, bool) else str(value)
            text += (f"(getenv('{name}') = 'true')" if isinstance(value, bool) else f"getenv('{name}')") + after
        lines.append(text + ";")
    lines += [f"USE {lake.CATALOG}.marts;", ".output"]
    return "\n".join(lines) + "\n", env


def night_snapshot(settings, night: dt.date) -> int:
    """The snapshot published for `night`, if the lake still keeps it."""
    with warehouse(settings, read_only=True) as con:
        found = con.execute(f"""SELECT p.snapshot_id, s.snapshot_id IS NOT NULL FROM audit.publications p
                                LEFT JOIN {lake.CATALOG}.snapshots() s USING (snapshot_id)
                                WHERE p.run_date = ? ORDER BY p.published_at DESC LIMIT 1""", [night]).fetchone()
        kept = [d for (d,) in con.execute(f"""SELECT DISTINCT p.run_date FROM audit.publications p
                                             JOIN {lake.CATALOG}.snapshots() s USING (snapshot_id) ORDER BY 1""").fetchall()]
    if not found or not found[1]:
        raise SystemExit(f"night {night}: {'never published' if not found else 'its snapshot is no longer kept'}; "
                         f"nights kept: {', '.join(map(str, kept)) or 'none'}")
    return found[0]


def export(settings, target: Path, snapshot: int | None = None) -> dict[str, int]:
    """Write the published marts (or those of a kept `snapshot`) into a new DuckDB file at `target`,
    each table and view a table; returns each one's rows. The file replaces `target` once whole."""
    building = target.with_name(target.name + ".building")
    building.unlink(missing_ok=True)
    rows = {}
    with published_marts(settings, snapshot) as con:
        if con is None:
            raise SystemExit("nothing published yet: run a night first")
        con.execute(f"ATTACH {quote_path(building)} AS export")
        names = [name for (name,) in con.execute("""SELECT table_name FROM information_schema.tables
                                                    WHERE table_catalog = current_database() AND table_schema = current_schema()
                                                    ORDER BY 1""").fetchall()]
        for name in names:
            con.execute(f"CREATE TABLE export.main.{quote_ident(name)} AS SELECT * FROM {quote_ident(name)}")
            rows[name] = con.execute(f"SELECT count(*) FROM export.main.{quote_ident(name)}").fetchone()[0]
        con.execute("DETACH export")
    os.replace(building, target)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--night", type=dt.date.fromisoformat, help="a published night still kept (lake only); default the last")
    parser.add_argument("-c", dest="sql", help="run this SQL and exit (default: an interactive session)")
    parser.add_argument("--export", type=Path, metavar="FILE", help="write the marts into this DuckDB file instead")
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.export:
        if args.night and settings.warehouse_kind == "file":
            parser.error("--night reads a kept snapshot of the lake; the file keeps the last night only")
        rows = export(settings, args.export.resolve(), night_snapshot(settings, args.night) if args.night else None)
        print(f"{args.export}: {len(rows)} tables, {sum(rows.values())} rows")
        return 0
    # the duckdb-cli package's, beside this Python (a venv) or on PATH (a user install, as in the Airflow image)
    beside = Path(sys.executable).with_name("duckdb")
    cli = [str(beside) if beside.exists() else shutil.which("duckdb") or "duckdb"]
    command = ["-c", args.sql] if args.sql else []
    if settings.warehouse_kind == "file":
        if args.night:
            parser.error("--night reads a kept snapshot of the lake (PIPELINE_WAREHOUSE=lake); the file keeps the last night only")
        if not settings.published_path.exists():
            raise SystemExit(f"nothing published yet ({settings.published_path}): run a night first")
        return subprocess.run([*cli, "-readonly", str(settings.published_path), *command]).returncode
    snapshot = night_snapshot(settings, args.night) if args.night else published_snapshot(settings)
    if snapshot is None:
        raise SystemExit("nothing published yet: run a night first")
    script, env = cli_script(settings, snapshot)
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as init:
        init.write(script)
        init.flush()
        return subprocess.run([*cli, "-init", init.name, *command], env={**os.environ, **env}).returncode


if __name__ == "__main__":
    sys.exit(main())
