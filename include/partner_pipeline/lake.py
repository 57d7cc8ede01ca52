"""The DuckLake foundation (issue 16): attach the lake, purge deleted rows physically.

A lake is a SQL catalog plus Parquet files under a data path (by default s3://<lake bucket>/ on the
pipeline's S3 endpoint). Two catalogs are supported:
- embedded (default): a SQLite file under the data dir. Readers attach while one process writes
  (they see its last commit); two writers at once fail ("database is locked", DuckLake 1.5.5), so
  its writers take turns (writer_turn).
- team: PostgreSQL (`PIPELINE_LAKE_CATALOG=postgres:<libpq string>`), which lets several
  processes write at once; DuckLake retries a commit that lost a race when it does not conflict.

Nothing here builds SQL from configuration text: every value (paths, endpoint, keys, the catalog's
password) is bound to a `CREATE SECRET`, and the ATTACH names only those secrets.
The pipeline keeps its warehouse here when PIPELINE_WAREHOUSE=lake (warehouse.warehouse).
"""

from __future__ import annotations

import contextlib
import fcntl
import datetime as dt
import importlib.util
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import duckdb

from partner_pipeline.sqltext import quote_ident, quote_path
from partner_pipeline.storage import client_from_settings, ensure_buckets

CATALOG = "lake"
# DuckDB's name for each extension -> the PyPI package that ships it for this exact DuckDB version
_EXTENSIONS = {
    "ducklake": "duckdb_extension_ducklake",
    "postgres_scanner": "duckdb_extension_postgres_scanner",
    "httpfs": "duckdb_extension_httpfs",
    "sqlite_scanner": "duckdb_extension_sqlite_scanner",
}
# A commit that lost the race to another writer is retried when it does not conflict (e.g. appends
# to one table). DuckLake's default is 10 attempts, 100 ms apart, growing x1.5 (~11 s in all); more
# writers need more attempts, and x1.2 keeps 30 of them within ~2 minutes.
RETRIES = {"ducklake_max_retry_count": 30, "ducklake_retry_wait_ms": 100, "ducklake_retry_backoff": 1.2}
# What analysts may read in the team configuration ((schema, table), None: the whole schema): the marts,
# the activation log and sync state that the marts' views activation_log and activation_syncs show, and
# the publications (which snapshot is the last published night). Nothing raw, staged, intermediate or
# audited besides. Enforced by the catalog (grant_analysts) and by object storage (analyst_prefixes).
ANALYST_TABLES = (("marts", None), ("activation", "activation_log"), ("activation", "syncs"), ("audit", "publications"))
# How the lake writes Parquet (lake-wide DuckLake options, set when the warehouse is declared). zstd at
# level 1 instead of DuckLake's default snappy: the bench's 10M partner records (mostly hex digests,
# which snappy leaves as they are) took 16.6 s and 727 MB to write against 21.5 s and 1,419 MB, and scan
# as fast. Pages are compressed either way: a byte search of the files must decode them (as the tests do).
PARQUET_OPTIONS = (("parquet_compression", "zstd"), ("parquet_compression_level", 1))
# The SQLite catalog in write-ahead-log mode, so readers never block the writer nor it them; a
# process that finds the file locked waits up to this long (ms) before it fails.
SQLITE_CATALOG = "META_JOURNAL_MODE 'WAL', META_BUSY_TIMEOUT 60000"


def load_lake_extensions(con: duckdb.DuckDBPyConnection) -> None:
    """Make con able to use ducklake, postgres and httpfs without the internet: LOAD each extension
    from the file its PyPI package installed (INSTALL would download it, or write ~/.duckdb)."""
    loaded = {name for (name,) in con.execute("SELECT extension_name FROM duckdb_extensions() WHERE loaded").fetchall()}
    for name, path in extension_files().items():
        if name not in loaded:
            con.execute(f"LOAD {quote_path(path)}")


def extension_files() -> dict[str, Path]:
    """Each lake extension's file, as its package installed it for this DuckDB version."""
    files = {}
    for name, package in _EXTENSIONS.items():
        spec = importlib.util.find_spec(package)
        path = (Path(spec.origin).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
                if spec and spec.origin else None)
        if path is None or not path.exists():
            raise RuntimeError(f"DuckDB extension {name} for duckdb {duckdb.__version__} is missing: "
                               f"install {package.replace('_', '-')}=={duckdb.__version__} (requirements.txt)")
        files[name] = path
    return files


def catalog_exists(settings) -> bool:
    """Whether the lake was made (its first writer makes it; a reader cannot): the embedded catalog's
    file exists, or a PostgreSQL catalog database attaches read-only."""
    if not settings.lake_catalog.startswith("postgres:"):
        return Path(settings.lake_catalog).exists()
    with duckdb.connect() as con:
        try:
            attach(con, settings, read_only=True)
        except duckdb.InvalidInputException as exc:
            if is_not_made(exc):
                return False
            raise
    return True


def is_not_made(exc: duckdb.Error) -> bool:
    """The error a read-only attach of a PostgreSQL catalog raises before the lake's first writer made it."""
    return "creating a new DuckLake is explicitly disabled" in str(exc)


@contextlib.contextmanager
def writer_turn(settings) -> Iterator[None]:
    """Hold the embedded catalog's one writer turn (an exclusive lock on a file beside it) while
    writing: two processes committing to a SQLite catalog at once fail on 1.5.5 ("database is locked",
    ducklake#1309), so on one machine writers wait for each other here, whichever task they run in.
    A PostgreSQL catalog takes many writers: no turn. Re-entrant within a process."""
    if settings.lake_catalog.startswith("postgres:"):
        yield
        return
    if _turns_held:
        _turns_held.append(None)
        try:
            yield
        finally:
            _turns_held.pop()
        return
    lock = Path(settings.lake_catalog).with_name(Path(settings.lake_catalog).name + ".writer")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        _turns_held.append(None)
        try:
            yield
        finally:
            _turns_held.pop()


_turns_held: list[None] = []


def set_parquet_options(con: duckdb.DuckDBPyConnection) -> None:
    """PARQUET_OPTIONS for every table of the lake (persisted in its catalog: every writer uses them)."""
    for name, value in PARQUET_OPTIONS:
        con.execute(f"CALL {CATALOG}.set_option(?, ?)", [name, value])


def analyst_prefixes(data_path: str) -> list[str]:
    """Where the files of ANALYST_TABLES are under the lake's data path (DuckLake writes a table's files
    under <schema>/<table>/): all that an analyst's object-storage keys may read."""
    return [f"{data_path.rstrip('/')}/{schema}/" + (f"{table}/" if table else "") for schema, table in ANALYST_TABLES]


def grant_analysts(settings, role: str) -> None:
    """Let PostgreSQL role `role` read the lake's catalog, and of its statistics only those of
    ANALYST_TABLES (lake_analyst_access.sql); run as the catalog's owner, once the lake is made."""
    if not settings.lake_catalog.startswith("postgres:"):
        raise ValueError("analysts' roles are a PostgreSQL catalog's: an embedded catalog is a file, read by whoever may read it")
    readable = ", ".join(f"('{schema}', " + (f"'{table}'" if table else "NULL") + "::text)" for schema, table in ANALYST_TABLES)  # our constants
    script = Path(__file__).with_name("lake_analyst_access.sql").read_text().format(role=quote_ident(role), readable=readable)
    with duckdb.connect() as con:
        attach(con, settings)
        con.execute("CALL postgres_execute(?, ?)", [f"__ducklake_metadata_{CATALOG}", script])


def ensure_data_bucket(settings) -> None:
    """The bucket of an s3:// data path, made if missing (as the pipeline's other buckets are)."""
    parts = urlsplit(settings.lake_data_path)
    if parts.scheme == "s3":
        ensure_buckets(client_from_settings(settings), [parts.netloc])


def attach(con: duckdb.DuckDBPyConnection, settings, read_only: bool = False, alias: str = CATALOG,
           snapshot: int | None = None) -> None:
    """Attach the lake as catalog `alias` (as of `snapshot`, if given: read-only then), with its S3
    secret and the retry settings for commit races."""
    load_lake_extensions(con)
    for sql, values in attach_statements(settings, read_only, alias, snapshot):
        con.execute(sql, values)


def attach_statements(settings, read_only: bool = False, alias: str = CATALOG,
                      snapshot: int | None = None) -> list[tuple[str, list]]:
    """The statements that attach the lake once its extensions are loaded, every setting a bound value
    (`?`); run by attach, and rendered for the DuckDB CLI by analysts.py."""
    statements: list[tuple[str, list]] = [(f"SET {name} = {value}", []) for name, value in RETRIES.items()]  # our constants
    if settings.lake_data_path.startswith("s3://"):
        statements.append(_s3_secret(settings))
    on_postgres = settings.lake_catalog.startswith("postgres:")
    if on_postgres:
        dsn = settings.lake_catalog.removeprefix("postgres:")
        if "password" in dsn.lower() or ("://" in dsn and urlsplit(dsn).password):
            # the connection string is echoed in DuckDB's errors: no password may be in it
            raise ValueError("PIPELINE_LAKE_CATALOG must not hold a password: set PIPELINE_LAKE_CATALOG_PASSWORD")
        statements += [
            ("CREATE OR REPLACE SECRET lake_catalog_postgres (TYPE postgres, PASSWORD ?)", [settings.lake_catalog_password or ""]),
            ("CREATE OR REPLACE SECRET lake_catalog (TYPE ducklake, METADATA_PATH ?, DATA_PATH ?, "
             "METADATA_PARAMETERS MAP {'TYPE': 'postgres', 'SECRET': 'lake_catalog_postgres'})", [dsn, settings.lake_data_path])]
    else:
        catalog = Path(settings.lake_catalog)
        catalog.parent.mkdir(parents=True, exist_ok=True)
        statements.append(("CREATE OR REPLACE SECRET lake_catalog (TYPE ducklake, METADATA_PATH ?, DATA_PATH ?, "
                           "METADATA_PARAMETERS MAP {'TYPE': 'sqlite'})", [str(catalog), settings.lake_data_path]))
    # DATA_INLINING_ROW_LIMIT 0: DuckLake 1.0 keeps inserts of up to 10 rows inside the catalog database;
    # every row goes to Parquet on the data path instead, so an erasure has one place to act and prove.
    options = ["READ_ONLY"] if read_only or snapshot is not None else []
    if snapshot is not None:
        options.append(f"SNAPSHOT_VERSION {int(snapshot)}")
    options.append("DATA_INLINING_ROW_LIMIT 0")
    if not on_postgres:
        options.append(SQLITE_CATALOG)
    statements.append((f"ATTACH 'ducklake:lake_catalog' AS {quote_ident(alias)} ({', '.join(options)})", []))
    return statements


def _s3_secret(settings) -> tuple[str, list]:
    """The pipeline's S3 credentials and endpoint, scoped to the lake's data path."""
    params: dict[str, object] = {"REGION": settings.aws_region}
    if settings.aws_access_key_id:
        params |= {"KEY_ID": settings.aws_access_key_id, "SECRET": settings.aws_secret_access_key or ""}
    if settings.s3_endpoint_url:  # an S3-compatible server (SeaweedFS, MinIO): path-style, as boto3 uses it
        endpoint = urlsplit(settings.s3_endpoint_url)
        params |= {"ENDPOINT": endpoint.netloc, "URL_STYLE": "path", "USE_SSL": endpoint.scheme == "https"}
    params["SCOPE"] = settings.lake_data_path
    keys = ", ".join(f"{key} ?" for key in params)  # fixed option names above, values bound
    return f"CREATE OR REPLACE SECRET lake_s3 (TYPE s3, {keys})", list(params.values())


def purge_deleted_rows(con: duckdb.DuckDBPyConnection, catalog: str = CATALOG) -> None:
    """Remove the bytes of every deleted row from the lake's storage (for erasure).

    A DELETE only writes a delete file beside the Parquet file that still holds the row, and every
    older snapshot keeps pointing at it. So: rewrite every data file that has any deleted row, expire
    every snapshot but the current one (time travel to before now ends), then delete the files no
    snapshot uses. Without the rewrite the row's bytes stay in the original file (STACK-NOTES, 1.5.5).
    Files are deleted at once, those no snapshot ever had too (a killed writer's): run it when no
    other process reads or writes the lake.
    The catalog keeps each table's column minimum and maximum too, and DuckLake 1.5.5 never narrows
    them: a deleted row's values stay there (measured: when the row was alone in its data file, or
    whenever it held a bound). Those are reset to the remaining rows' own bounds, and a SQLite catalog
    file is rewritten from its live rows. Not covered: a PostgreSQL catalog's dead row versions (until
    its VACUUM), WAL and backups.
    """
    touched = _tables_with_deleted_rows(con, catalog)
    con.execute("CALL ducklake_rewrite_data_files(?, delete_threshold => 0)", [catalog])
    con.execute("CALL ducklake_expire_snapshots(?, older_than => now())", [catalog])
    con.execute("CALL ducklake_cleanup_old_files(?, cleanup_all => true)", [catalog])
    # and the files no snapshot ever had: a killed writer's, which may hold the erased too
    con.execute("CALL ducklake_delete_orphaned_files(?, cleanup_all => true)", [catalog])
    # A commit between a table's scan and its update could leave bounds narrower than its rows, which
    # would make DuckDB skip rows: scan again until no commit landed meanwhile.
    for _ in range(5):
        before = _latest_snapshot(con, catalog)
        for table_id in touched:
            _reset_column_bounds(con, catalog, table_id)
        if _latest_snapshot(con, catalog) == before:
            break
    else:
        raise RuntimeError("other processes kept committing to the lake while its column bounds were reset: "
                           "stop them and purge again")
    _rewrite_sqlite_catalog(con, catalog)


# Files below this size are merged each night (compact_small_files): the appends of logs, audit tables
# and activation batches (an HTTP sync writes a file per commit of its batches, at most a second apart). The models' and the
# drops' files are hundreds of MB and are left alone.
SMALL_FILE_BYTES = 8_000_000


def compact_small_files(con: duckdb.DuckDBPyConnection, catalog: str = CATALOG) -> None:
    """Merge the lake's small data files, so that a table read each night (the activation log and state,
    the audit logs) is a few files, not one per commit ever made. Snapshots keep reading what they read
    (DuckLake points them at parts of the merged file); the files merged are deleted once no kept
    snapshot needs them (keep_recent_snapshots)."""
    con.execute("CALL ducklake_merge_adjacent_files(?, max_file_size => ?)", [catalog, SMALL_FILE_BYTES])


def keep_recent_snapshots(con: duckdb.DuckDBPyConnection, days: int, orphan_age: dt.timedelta = dt.timedelta(days=1),
                          catalog: str = CATALOG) -> None:
    """Expire the snapshots older than `days` days (time travel reaches back that far; the newest is
    always kept) and delete the files only they used; delete the files no snapshot ever had (a
    killed writer's) once older than `orphan_age`, which a writer still at work never is."""
    con.execute("CALL ducklake_expire_snapshots(?, older_than => now() - to_days(?))", [catalog, days])
    con.execute("CALL ducklake_cleanup_old_files(?, cleanup_all => true)", [catalog])
    con.execute("CALL ducklake_delete_orphaned_files(?, older_than => now() - ?)", [catalog, orphan_age])


def _latest_snapshot(con: duckdb.DuckDBPyConnection, catalog: str) -> int:
    return con.execute(f"SELECT max(snapshot_id) FROM {_metadata(catalog)}.ducklake_snapshot").fetchone()[0]


def _metadata(catalog: str) -> str:
    """The attached catalog database's name (DuckLake names it after the lake)."""
    return quote_ident(f"__ducklake_metadata_{catalog}")


def _tables_with_deleted_rows(con: duckdb.DuckDBPyConnection, catalog: str) -> list[int]:
    """Live tables with a delete file, or a data file that a DELETE dropped whole (no delete file then)."""
    meta = _metadata(catalog)
    return [table_id for (table_id,) in con.execute(f"""
        SELECT table_id FROM {meta}.ducklake_table WHERE end_snapshot IS NULL AND table_id IN (
            SELECT table_id FROM {meta}.ducklake_delete_file WHERE end_snapshot IS NULL
            UNION ALL
            SELECT table_id FROM {meta}.ducklake_data_file WHERE end_snapshot IS NOT NULL)
        ORDER BY table_id""").fetchall()]


def _reset_column_bounds(con: duckdb.DuckDBPyConnection, catalog: str, table_id: int) -> None:
    """Set a table's column minimum and maximum in the catalog to those of its rows now, in DuckDB's
    text form of each value (the form DuckLake stores), where they differ. Nested columns (list
    elements, struct fields, map keys and values) have bounds of their own."""
    meta = _metadata(catalog)
    (schema, table), = con.execute(f"""
        SELECT s.schema_name, t.table_name FROM {meta}.ducklake_table t
        JOIN {meta}.ducklake_schema s ON s.schema_id = t.schema_id AND s.end_snapshot IS NULL
        WHERE t.table_id = ? AND t.end_snapshot IS NULL""", [table_id]).fetchall()
    columns = {column_id: (name, column_type, parent) for column_id, name, column_type, parent in con.execute(
        f"SELECT column_id, column_name, column_type, parent_column FROM {meta}.ducklake_column "
        "WHERE table_id = ? AND end_snapshot IS NULL", [table_id]).fetchall()}
    source = f"{quote_ident(catalog)}.{quote_ident(schema)}.{quote_ident(table)}"

    def values(column_id: int) -> str:
        """A query whose column v holds every value of the column, at any depth."""
        name, _, parent = columns[column_id]
        if parent is None:
            return f"SELECT {quote_ident(name)} AS v FROM {source}"
        elements = {"list": "unnest(v)", "struct": f"v.{quote_ident(name)}",
                    "map": "unnest(map_keys(v))" if name == "key" else "unnest(map_values(v))"}
        if columns[parent][1] not in elements:
            raise NotImplementedError(f"{schema}.{table}: column bounds inside a {columns[parent][1]} column "
                                      "cannot be reset; the erased values may stay in the catalog's statistics")
        return f"SELECT {elements[columns[parent][1]]} AS v FROM ({values(parent)})"

    stored = [(column_id, low, high) for column_id, low, high in con.execute(
        f"SELECT column_id, min_value, max_value FROM {meta}.ducklake_table_column_stats "
        "WHERE table_id = ? AND (min_value IS NOT NULL OR max_value IS NOT NULL) ORDER BY column_id",
        [table_id]).fetchall() if column_id in columns]  # not a dropped column's
    # one scan for the top-level columns, one per nested column
    top = [column_id for column_id, _, _ in stored if columns[column_id][2] is None]
    bounds = ", ".join(f"min({quote_ident(columns[c][0])})::VARCHAR, max({quote_ident(columns[c][0])})::VARCHAR" for c in top)
    found = con.execute(f"SELECT {bounds} FROM {source}").fetchone() if top else ()
    actual = {column_id: tuple(found[2 * n:2 * n + 2]) for n, column_id in enumerate(top)}
    for column_id, _, _ in stored:
        if column_id not in actual:
            actual[column_id] = con.execute(f"SELECT min(v)::VARCHAR, max(v)::VARCHAR FROM ({values(column_id)})").fetchone()
    for column_id, low, high in stored:
        if (low, high) != actual[column_id]:
            con.execute(f"UPDATE {meta}.ducklake_table_column_stats SET min_value = ?, max_value = ? "
                        "WHERE table_id = ? AND column_id = ?", [*actual[column_id], table_id, column_id])


def _rewrite_sqlite_catalog(con: duckdb.DuckDBPyConnection, catalog: str) -> None:
    """SQLite keeps the bytes of deleted and overwritten rows in free pages and in its write-ahead
    log: VACUUM rewrites the file from its live rows, and a TRUNCATE checkpoint empties the log.
    A PostgreSQL catalog is left alone (its path is a connection string, not a file)."""
    (path,), = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = ?", [catalog]).fetchall()
    if not path or not Path(path).is_file():
        return
    with open(path, "rb") as file:
        if file.read(16) != b"SQLite format 3\x00":
            return
    with contextlib.closing(sqlite3.connect(path, timeout=60)) as sqlite:
        sqlite.execute("VACUUM")
        sqlite.execute("PRAGMA wal_checkpoint(TRUNCATE)")

