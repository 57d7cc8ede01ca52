"""Writing the generated files: CSV (RFC 4180, optionally gzip with mtime 0) and Parquet data files,
JSON with sorted keys, fresh output folders; byte-identical for the same input."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from partner_pipeline_dev.synth.identities import _join


GZIP_LEVEL = 1  # hex digests barely compress better at 6, which is 3x slower
_NEEDS_QUOTES = r'[",\r\n]'


def _bool_strings(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values, pa.bool_()), pa.string())


def _csv_field(arr: pa.Array) -> pa.Array:
    """RFC 4180 quoting where needed; nulls stay null (written as empty fields)."""
    if not pa.types.is_string(arr.type):
        arr = pc.cast(arr, pa.string())
    needs = pc.fill_null(pc.match_substring_regex(arr, _NEEDS_QUOTES), False)
    if not pc.any(needs).as_py():
        return arr
    quoted = _join('"', pc.replace_substring(arr, '"', '""'), '"')
    return pc.if_else(needs, quoted, arr)


def _csv_bytes(columns: list[pa.Array], eol: str) -> bytes:
    if not columns or len(columns[0]) == 0:
        return b""
    fields = [_csv_field(c) for c in columns]
    lines = pc.binary_join_element_wise(*fields, ",", null_handling="replace", null_replacement="")
    lines = _join(lines, eol)
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=len(lines) + 1, offset=lines.offset * 4)
    return memoryview(lines.buffers()[2])[offsets[0]:offsets[-1]].tobytes()


class _DataFile:
    """One data file written in chunks: CSV (optionally gzipped, BOM, CRLF) or Parquet.

    Encoding and compression run on one background thread (Arrow and zlib release the GIL), so
    they overlap with hashing the next chunk; at most one chunk is pending."""

    def __init__(self, path: Path, file_format: str, names: list[str], parquet_schema: pa.Schema | None = None,
                 bom: bool = False, eol: str = "\n") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.format, self.names, self.eol, self.rows = path, file_format, names, eol, 0
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending = None
        if file_format == "parquet":
            self._parquet = pq.ParquetWriter(path, parquet_schema, compression="zstd")
            self._schema = parquet_schema
            return
        self._raw = open(path, "wb")
        self._out = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0, compresslevel=GZIP_LEVEL) \
            if file_format == "csv.gz" else self._raw
        if bom:
            self._out.write("\ufeff".encode())
        self._out.write(_csv_bytes([pa.array([name], pa.string()) for name in names], eol))

    def __enter__(self) -> _DataFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, columns: dict[str, pa.Array]) -> None:
        rows = len(next(iter(columns.values())))
        if rows == 0:
            return
        self.rows += rows
        self._wait()
        self._pending = self._pool.submit(self._write_now, columns)

    def _write_now(self, columns: dict[str, pa.Array]) -> None:
        if self.format == "parquet":
            self._parquet.write_table(pa.table(columns, schema=self._schema))
        else:
            self._out.write(_csv_bytes([columns[name] for name in self.names], self.eol))

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def close(self) -> None:
        if self._pool is None:
            return
        try:
            self._wait()
        finally:
            self._pool.shutdown()
            self._pool = None
            if self.format == "parquet":
                self._parquet.close()
            else:
                if self._out is not self._raw:
                    self._out.close()
                self._raw.close()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 * 1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, sort_keys=True, indent=2) + "\n", encoding="utf-8")


def _fresh_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
