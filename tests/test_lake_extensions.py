"""The lake's DuckDB extensions load from their PyPI packages: no network, no ~/.duckdb, signed."""

import duckdb

from partner_pipeline.lake import load_lake_extensions


def test_extensions_load_offline_from_the_packages(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    # a fresh home directory: an INSTALL would write extensions/ under it; autoinstall off: no download
    con = duckdb.connect(config={"home_directory": str(home), "autoinstall_known_extensions": "false"})
    load_lake_extensions(con)
    load_lake_extensions(con)  # a second call on the same database is a no-op
    loaded = dict(con.execute("SELECT extension_name, install_mode FROM duckdb_extensions() "
                              "WHERE extension_name IN ('ducklake', 'postgres_scanner', 'httpfs', 'sqlite_scanner') AND loaded").fetchall())
    assert set(loaded) == {"ducklake", "postgres_scanner", "httpfs", "sqlite_scanner"}
    # loaded although unsigned extensions are refused: the packaged binaries carry DuckDB's signature
    assert con.execute("SELECT current_setting('allow_unsigned_extensions')").fetchone()[0] is False
    assert list(home.iterdir()) == []

    con.execute(f"ATTACH 'ducklake:{tmp_path / 'catalog.ducklake'}' AS lake (DATA_PATH '{tmp_path / 'files'}/')")
    con.execute("CREATE TABLE lake.t AS SELECT range AS n FROM range(1000)")  # over 10 rows: a Parquet file, not inlined
    assert con.execute("SELECT sum(n) FROM lake.t").fetchall() == [(499500,)]
    assert list((tmp_path / "files").rglob("*.parquet"))
