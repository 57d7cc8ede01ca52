"""The DuckLake foundation (issue 16): attach the lake, purge deleted rows physically.

A lake is a SQL catalog plus Parquet files under a data path (by default s3://<lake bucket>/ on the
pipeline's S3 endpoint). Two catalogs are supported:
- embedded (default): a DuckDB file under the data dir. One client at a time, like the warehouse
  file today, whose writers the one-slot pool already serializes.
- team: PostgreSQL (`PIPELINE_LAKE_CATALOG=postgres:<libpq string>`), which lets several
  processes write at once; DuckLake retries a commit that lost a race when it does not conflict.

Nothing here builds SQL from configuration text: every value (paths, endpoint, keys, the catalog's
password) is bound to a `CREATE SECRET`, and the ATTACH names only those secrets.
The pipeline itself does not use the lake yet.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from urllib.parse import urlsplit

import duckdb

from partner_pipeline.warehouse import quote_path

CATALOG = "lake"
# DuckDB's name for each extension -> the PyPI package that ships it for this exact DuckDB version
_EXTENSIONS = {
    "ducklake": "duckdb_extension_ducklake",
    "postgres_scanner": "duckdb_extension_postgres_scanner",
    "httpfs": "duckdb_extension_httpfs",
}
# A commit that lost the race to another writer is retried when it does not conflict (e.g. appends
# to one table). DuckLake's default is 10 attempts, 100 ms apart, growing x1.5 (~11 s in all); more
# writers need more attempts, and x1.2 keeps 30 of them within ~2 minutes.
RETRIES = {"ducklake_max_retry_count": 30, "ducklake_retry_wait_ms": 100, "ducklake_retry_backoff": 1.2}


def load_lake_extensions(con: duckdb.DuckDBPyConnection) -> None:
    """Make con able to use ducklake, postgres and httpfs without the internet: LOAD each extension
    from the file its PyPI package installed (INSTALL would download it, or write ~/.duckdb)."""
    loaded = {name for (name,) in con.execute("SELECT extension_name FROM duckdb_extensions() WHERE loaded").fetchall()}
    for name, package in _EXTENSIONS.items():
        if name in loaded:
            continue
        spec = importlib.util.find_spec(package)
        path = (Path(spec.origin).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
                if spec and spec.origin else None)
        if path is None or not path.exists():
            raise RuntimeError(f"DuckDB extension {name} for duckdb {duckdb.__version__} is missing: "
                               f"install {package.replace('_', '-')}=={duckdb.__version__} (requirements.txt)")
        con.execute(f"LOAD {quote_path(path)}")


def attach(con: duckdb.DuckDBPyConnection, settings, read_only: bool = False) -> None:
    """Attach the lake as catalog `lake`, with its S3 secret and the retry settings for commit races."""
    load_lake_extensions(con)
    for name, value in RETRIES.items():
        con.execute(f"SET {name} = {value}")  # our constants; SET takes no bound parameter
    if settings.lake_data_path.startswith("s3://"):
        _create_s3_secret(con, settings)
    if settings.lake_catalog.startswith("postgres:"):
        dsn = settings.lake_catalog.removeprefix("postgres:")
        if "password" in dsn.lower() or ("://" in dsn and urlsplit(dsn).password):
            # the connection string is echoed in DuckDB's errors: no password may be in it
            raise ValueError("PIPELINE_LAKE_CATALOG must not hold a password: set PIPELINE_LAKE_CATALOG_PASSWORD")
        con.execute("CREATE OR REPLACE SECRET lake_catalog_postgres (TYPE postgres, PASSWORD ?)",
                    [settings.lake_catalog_password or ""])
        con.execute("CREATE OR REPLACE SECRET lake_catalog (TYPE ducklake, METADATA_PATH ?, DATA_PATH ?, "
                    "METADATA_PARAMETERS MAP {'TYPE': 'postgres', 'SECRET': 'lake_catalog_postgres'})",
                    [dsn, settings.lake_data_path])
    else:
        catalog = Path(settings.lake_catalog)
        catalog.parent.mkdir(parents=True, exist_ok=True)
        con.execute("CREATE OR REPLACE SECRET lake_catalog (TYPE ducklake, METADATA_PATH ?, DATA_PATH ?)",
                    [str(catalog), settings.lake_data_path])
    # DATA_INLINING_ROW_LIMIT 0: DuckLake 1.0 keeps inserts of up to 10 rows inside the catalog database;
    # every row goes to Parquet on the data path instead, so an erasure has one place to act and prove.
    options = "READ_ONLY, DATA_INLINING_ROW_LIMIT 0" if read_only else "DATA_INLINING_ROW_LIMIT 0"
    con.execute(f"ATTACH 'ducklake:lake_catalog' AS {CATALOG} ({options})")


def _create_s3_secret(con: duckdb.DuckDBPyConnection, settings) -> None:
    """The pipeline's S3 credentials and endpoint, scoped to the lake's data path."""
    params: dict[str, object] = {"REGION": settings.aws_region}
    if settings.aws_access_key_id:
        params |= {"KEY_ID": settings.aws_access_key_id, "SECRET": settings.aws_secret_access_key or ""}
    if settings.s3_endpoint_url:  # an S3-compatible server (SeaweedFS, MinIO): path-style, as boto3 uses it
        endpoint = urlsplit(settings.s3_endpoint_url)
        params |= {"ENDPOINT": endpoint.netloc, "URL_STYLE": "path", "USE_SSL": endpoint.scheme == "https"}
    params["SCOPE"] = settings.lake_data_path
    keys = ", ".join(f"{key} ?" for key in params)  # fixed option names above, values bound
    con.execute(f"CREATE OR REPLACE SECRET lake_s3 (TYPE s3, {keys})", list(params.values()))


def purge_deleted_rows(con: duckdb.DuckDBPyConnection, catalog: str = CATALOG) -> None:
    """Remove the bytes of every deleted row from the lake's storage (for erasure).

    A DELETE only writes a delete file beside the Parquet file that still holds the row, and every
    older snapshot keeps pointing at it. So: rewrite every data file that has any deleted row, expire
    every snapshot but the current one (time travel to before now ends), then delete the files no
    snapshot uses. Without the rewrite the row's bytes stay in the original file (STACK-NOTES, 1.5.5).
    Files are deleted at once: run it when no other process is reading the lake.
    Not covered: the catalog database. It keeps column statistics (min and max values): measured on
    1.5.5, an erased value that was alone in its data file stays the table's min or max in
    ducklake_table_column_stats (tests/test_lake.py, xfail), and PostgreSQL's WAL held it too.
    """
    con.execute("CALL ducklake_rewrite_data_files(?, delete_threshold => 0)", [catalog])
    con.execute("CALL ducklake_expire_snapshots(?, older_than => now())", [catalog])
    con.execute("CALL ducklake_cleanup_old_files(?, cleanup_all => true)", [catalog])
