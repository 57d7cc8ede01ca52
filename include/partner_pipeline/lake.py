"""DuckLake (issue 16): the DuckDB extensions it needs, loaded offline.

The pipeline itself does not use the lake yet.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import duckdb

from partner_pipeline.warehouse import quote_path

# DuckDB's name for each extension -> the PyPI package that ships it for this exact DuckDB version
_EXTENSIONS = {
    "ducklake": "duckdb_extension_ducklake",
    "postgres_scanner": "duckdb_extension_postgres_scanner",
    "httpfs": "duckdb_extension_httpfs",
}


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
