"""Download a verified drop's files and load them into the drop's own staging DuckDB file (its rows
in Parquet parts beside it, StageFile).

Every drop gets its own file, so drops are staged in parallel without contending for the
warehouse's single writer. Values are kept as delivered (VARCHAR); validation and the dbt
staging models do the typing.

File names are partner input: each file is downloaded under a name the pipeline makes (its index
in the manifest and its type), paths and values are bound as parameters, and the only names
spliced into SQL are our own columns (warehouse.quote_ident).
"""

from __future__ import annotations

import gzip
import re
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from partner_pipeline.agreements import CONSENT_COLUMNS, RECORD_COLUMNS, REQUIRED_RECORD_COLUMNS, Agreement, special_category_term
from partner_pipeline.contracts import StageFile
from partner_pipeline.drops import DropRef, ManifestFile, data_suffix
from partner_pipeline.problems import DropRejected, Problem, scrub_paths
from partner_pipeline.sqltext import quote_ident, quote_path
from partner_pipeline.storage import download_with_sha256

_CSV_OPTIONS = "header=true, all_varchar=true, delim=',', quote='\"', escape='\"', encoding='utf-8', strict_mode=true"
_INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
_PARQUET_TYPES = {
    "string": {"VARCHAR"},
    "integer": _INTEGER_TYPES,
    "number": _INTEGER_TYPES | {"FLOAT", "DOUBLE", "DECIMAL"},
    "boolean": {"BOOLEAN"},
    "date": {"DATE"},
    "timestamp": {"TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMP_S"},
    # spec: consent_ts in Parquet may also be ISO 8601 text, judged per row like CSV (consent_ts_invalid)
    "timestamp_or_text": {"TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMP_S", "VARCHAR"},
}


@dataclass
class StagedDrop:
    path: Path
    rows_received: int
    columns: list[str]  # record and attribute columns kept, in table order
    dropped_columns: list[str] = field(default_factory=list)
    absent_attributes: list[str] = field(default_factory=list)
    checksums: dict[str, str] = field(default_factory=dict)


def connect(path: Path, settings) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path), config=settings.duckdb_config(path.parent / "tmp"))
    con.execute("SET TimeZone = 'UTC'")  # Parquet timestamps become text in UTC
    return con


def local_paths(work_dir: Path, files: list[ManifestFile]) -> dict[Path, str]:
    """Where each file is downloaded -> its object key: a name we make, so the partner's never touches a path."""
    return {work_dir / "files" / f"{index:04d}{data_suffix(f.key)}": f.key for index, f in enumerate(files)}


def stage_drop(client, drop: DropRef, files: list[ManifestFile], agreement: Agreement, work_dir: Path, settings) -> StagedDrop:
    """Verify checksums, columns and row counts while loading; DropRejected on any drop-level fault."""
    if work_dir.exists():
        shutil.rmtree(work_dir)  # a re-run starts from nothing
    (work_dir / "files").mkdir(parents=True)
    paths = list(local_paths(work_dir, files))
    checksums = _download_and_verify(client, drop, files, paths)
    columns = [*RECORD_COLUMNS, *agreement.attributes]
    staged = StagedDrop(work_dir / StageFile.FILE_NAME, 0, columns, checksums=checksums)
    problems: list[Problem] = []
    parts = [StageFile.part_path(staged.path, index) for index in range(len(files))]
    parts[0].parent.mkdir()
    con = connect(staged.path, settings)
    try:
        con.execute(StageFile.issued_seeds_ddl())
        for path, part, f in zip(paths, parts, files):
            problems += _load_file(con, path, part, f, drop, agreement, staged)
        if not problems:
            con.execute(StageFile.records_view_ddl(parts, quote_path))
    finally:
        con.close()
    if problems:
        raise DropRejected(problems)
    for path in paths:
        path.unlink()  # the parts hold the rows now
    return staged


def _download_and_verify(client, drop: DropRef, files: list[ManifestFile], paths: list[Path]) -> dict[str, str]:
    checksums, problems = {}, []
    for f, path in zip(files, paths):
        actual = download_with_sha256(client, drop.bucket, drop.prefix + f.key, path)
        checksums[f.key] = actual
        if actual != f.sha256:
            problems.append(Problem(
                "checksum_mismatch", f"file bytes hash to {actual}, the manifest says {f.sha256}.",
                "Re-upload the file (it may be truncated or replaced) or correct its sha256 in manifest.json.",
                file=drop.prefix + f.key, field="sha256"))
    if problems:
        raise DropRejected(problems)
    return checksums


def _source(path: Path) -> str:
    """The table function reading a file; its path is the query's last bound parameter."""
    if path.name.endswith(".parquet"):
        return "read_parquet(?)"
    return f"read_csv(?, {_CSV_OPTIONS})"


def _load_file(con, path: Path, part: Path, f: ManifestFile, drop: DropRef, agreement: Agreement, staged: StagedDrop) -> list[Problem]:
    where = drop.prefix + f.key
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {_source(path)}", [str(path)]).fetchall()
    except duckdb.Error as exc:
        kind = "Parquet" if path.name.endswith(".parquet") else "CSV (RFC 4180, UTF-8, header row)"
        return [_unreadable(f"cannot be read as {kind}", exc, path, where)]
    header = {name: col_type for name, col_type, *_ in described}
    if list(header) == ["column0"]:  # DuckDB's name for a CSV without a header row
        return [Problem("file_unreadable", "has no header row (the file is empty or has no column names).",
                        "Export the file with its header row (spec: Record columns) and re-deliver the drop.", file=where)]
    problems = []
    for column in REQUIRED_RECORD_COLUMNS:
        if column not in header:
            problems.append(Problem("column_missing", f"required column {column} is missing (header has: {', '.join(header)}).",
                                    "Add the column (spec: Record columns); it may be empty on a row only where the spec allows.",
                                    file=where, field=column))
    for column in header:
        if column in staged.columns:
            continue
        term = special_category_term(column)
        if term:
            problems.append(Problem("special_category_column",
                                    f"column {column} looks like special-category personal data ({term}) and the agreement does not name it.",
                                    "Remove the column from the drop, or add it to the agreement's attributes once the agreement allows it.",
                                    file=where, field=column))
        elif column not in staged.dropped_columns:
            staged.dropped_columns.append(column)
    for column in agreement.attributes:
        if column not in header and column not in staged.absent_attributes:
            staged.absent_attributes.append(column)
    if path.name.endswith(".parquet"):
        problems += _parquet_type_problems(con, path, header, agreement, where)
    if problems:
        return problems
    # every part has every kept column, in one order (the records view reads them as one table)
    select = ", ".join(f"NULLIF(CAST({quote_ident(c)} AS VARCHAR), '') AS {quote_ident(c)}" if c in header
                       else f"CAST(NULL AS VARCHAR) AS {quote_ident(c)}" for c in staged.columns)
    try:
        loaded = con.execute(
            f"COPY (SELECT {select}, CAST(? AS VARCHAR) AS {StageFile.SOURCE_FILE}, row_number() OVER () AS {StageFile.SOURCE_ROW}, "
            f"CAST(? AS BIGINT) + row_number() OVER () AS {StageFile.ROW} FROM {_source(path)}) "
            f"TO {quote_path(part)} ({StageFile.PART_OPTIONS})",
            [f.key, staged.rows_received, str(path)],
        ).fetchone()[0]
    except duckdb.Error as exc:
        return [_unreadable("failed while reading rows", exc, path, where)]
    staged.rows_received += loaded
    if loaded != f.rows:
        return [Problem("row_count_mismatch", f"the file has {loaded} data rows, the manifest says {f.rows}.",
                        "Correct files[].rows and record_count in manifest.json, or re-deliver the complete file.",
                        file=where, field="rows")]
    return []


def _parquet_type_problems(con, path: Path, header: dict[str, str], agreement: Agreement, where: str) -> list[Problem]:
    expected = {
        "partner_record_id": "string", "partner_person_id": "string", "email_sha256": "string", "phone_sha256": "string", "seed_id": "string",
        **{c: "boolean" for c in CONSENT_COLUMNS}, "consent_ts": "timestamp_or_text",
        **{name: attr.type for name, attr in agreement.attributes.items()},
    }
    problems = []
    for column, kind in expected.items():
        found = header.get(column)
        if found is not None and found.split("(")[0] not in _PARQUET_TYPES[kind] and _has_values(con, path, column):
            needed = kind.replace("_", " ")
            problems.append(Problem("parquet_wrong_type", f"column {column} is {found}; the contract needs {needed} "
                                    f"({' or '.join(sorted(_PARQUET_TYPES[kind])[:3])}).",
                                    f"Write {column} with a {needed} Parquet type and re-deliver the drop.", file=where, field=column))
    return problems


def _has_values(con, path: Path, column: str) -> bool:
    """A column with no value at all carries no type (writers store it as NULL type): nothing to reject."""
    return con.execute(f"SELECT count({quote_ident(column)}) > 0 FROM read_parquet(?)", [str(path)]).fetchone()[0]


# DuckDB's error text after the cause: the offending line (personal data), hints for its own options, the query
_NOT_CAUSE = ("Original Line:", "Possible Solution", "Possible fixes", "The search space", "LINE ", "file =")


def _unreadable(what: str, exc: Exception, path: Path, where: str) -> Problem:
    """file_unreadable with the whole cause (gzip's own error first), the object key for any local path, and a fix."""
    causes = [_gzip_fault(path)] if path.name.endswith(".gz") else []
    causes.append(_duckdb_cause(exc))
    cause = scrub_paths("; ".join(c for c in causes if c), {str(path): where})
    if "gzip" in cause:
        fix = "Compress the complete file again with gzip (the upload may have been cut short), update its sha256 in manifest.json and re-deliver the drop."
    elif "not utf-8 encoded" in cause.lower():
        fix = "Re-export the file in UTF-8 (it looks like another encoding, such as Latin-1 or Windows-1252) and re-deliver the drop."
    else:
        fix = "Re-export the file in the format its extension names (RFC 4180 CSV in UTF-8 with a header row, or Parquet) and re-deliver the drop."
    return Problem("file_unreadable", f"{what}: {cause}.", fix, file=where)


def _duckdb_cause(exc: Exception) -> str:
    lines = []
    for line in (raw.strip() for raw in str(exc).strip().splitlines()):
        if line.startswith(_NOT_CAUSE[1:]) or (not line and lines):
            break
        if line and not line.startswith(_NOT_CAUSE[0]):
            lines.append(line.rstrip("."))
    return re.sub(r"^[A-Za-z ]*Error: ", "", ". ".join(lines))


def _gzip_fault(path: Path) -> str | None:
    """Run only once DuckDB has failed on a .gz file: its own message hides gzip's (e.g. only "Error when sniffing file")."""
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 20):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        return f"the file is not a complete gzip stream ({exc})"
    return None
