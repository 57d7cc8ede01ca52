"""The typed contracts between the nightly tasks and the modules behind them.

`DropOutcome`: one drop of the night, from `discover` (new, skipped, incomplete) through `ingest`
(staged or quarantined) to `publish`. It crosses Airflow XCom as JSON: `to_xcom()` at a task's
return, `from_xcom()` where the next task (or the alert callback) takes it in; everything in
between reads its attributes.

`StageFile`: the layout of a drop's own staging DuckDB file and its Parquet parts, which staging.py
writes, validation.py checks, ingest.py marks and warehouse.py loads from.

Light on purpose (pydantic only): the alert callback, imported with the DAG file, reads outcomes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from partner_pipeline.drops import DropRef

DropStatus = Literal["new", "skipped", "incomplete", "staged", "quarantined"]


class DropOutcome(BaseModel):
    """What the night knows of one drop. Fields past `run_id` are filled in by ingest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # the delivery (drops.DropRef); an incomplete drop has only partner_id, drop_date and prefix
    partner_id: str
    drop_date: str
    prefix: str
    bucket: str | None = None
    delivery_id: str | None = None
    delivered_at: str | None = None
    objects: tuple[tuple[str, int, str], ...] = ()
    status: DropStatus
    run_id: str
    # what decides the outcome (ingest.processing_key); None after an internal error, so the next run retries
    processing_key: str | None = None
    rows_received: int = 0
    rows_valid: int = 0
    rows_quarantined: int = 0
    failures_by_rule: dict[str, int] = {}
    fixes_by_rule: dict[str, str] = {}
    dropped_columns: tuple[str, ...] = ()
    absent_attributes: tuple[str, ...] = ()
    checksums: dict[str, str] = {}
    problems: tuple[dict, ...] = ()  # problems.Problem.as_dict(), as report.json and the audit log store them
    seconds: dict[str, float] = {}
    staging_path: str | None = None  # a staged drop's StageFile
    validation_result: str | None = None
    data_docs: str | None = None
    quarantine_report: str | None = None  # s3:// URI of a quarantined drop's report.json
    # its rows and audit events already in the warehouse: on the lake, its own ingest task commits it
    committed: bool = False

    @classmethod
    def of_drop(cls, drop: DropRef, *, status: DropStatus, run_id: str, processing_key: str | None) -> DropOutcome:
        return cls(**drop.as_dict(), status=status, run_id=run_id, processing_key=processing_key)

    def drop_ref(self) -> DropRef:
        from partner_pipeline.drops import DropRef

        if self.bucket is None or self.delivery_id is None or self.delivered_at is None:
            raise ValueError(f"{self.prefix}: an {self.status} drop is no complete delivery")
        return DropRef(self.partner_id, self.drop_date, self.bucket, self.prefix, self.delivery_id, self.delivered_at,
                       self.objects)

    def but(self, **changes) -> DropOutcome:
        """A copy with `changes`, validated."""
        return type(self).model_validate({**self.model_dump(), **changes})

    @property
    def name(self) -> str:
        return f"{self.partner_id}/{self.drop_date}"

    def to_xcom(self) -> dict:
        """JSON-safe (tuples as lists), for a task's return value."""
        return self.model_dump(mode="json")

    @classmethod
    def from_xcom(cls, data: dict | DropOutcome) -> DropOutcome:
        return data if isinstance(data, DropOutcome) else cls.model_validate(data)


class StageFile:
    """A drop's staging DuckDB file: view `records` reads the kept record and attribute columns (all
    VARCHAR, as delivered) and the provenance columns from the drop's Parquet parts beside the file,
    one per delivered file (part_path); ingest writes table `row_failures`, one row per (row, broken
    rule). Names only our own identifiers, so they may be spliced into SQL."""

    FILE_NAME = "stage.duckdb"
    RECORDS = "records"
    # Parquet parts rather than a table of the stage file: writing a 5M-row drop into DuckDB's own storage
    # took 19 s of one core, into Parquet 13 s, and the checks read both as fast (the README's benchmark section)
    PART_OPTIONS = "FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1"
    SOURCE_FILE = "_source_file"  # the object key relative to the drop prefix
    SOURCE_ROW = "_source_row"  # 1-based data row within that file
    ROW = "_row"  # 1-based row number across the drop's files: the key row_failures refers to
    ROW_FAILURES = "row_failures"
    RULE = "rule"
    # the seed ids issued to the drop's agreement (raw.issued_seeds), copied in by ingest when the drop
    # carries seed ids (empty otherwise), so the seed_id_unknown rule is SQL over the stage file like the others
    ISSUED_SEEDS = "issued_seeds"

    @classmethod
    def part_path(cls, stage_path: Path, index: int) -> Path:
        """Where the rows of the drop's file number `index` (manifest order) are staged."""
        return stage_path.parent / cls.RECORDS / f"{index:04d}.parquet"

    @classmethod
    def records_view_ddl(cls, parts: list[Path], quote_path) -> str:
        """CREATE VIEW records over the drop's parts (each written with the same columns, in the same order)."""
        return f"CREATE OR REPLACE VIEW {cls.RECORDS} AS SELECT * FROM read_parquet([{', '.join(quote_path(p) for p in parts)}])"

    @classmethod
    def issued_seeds_ddl(cls) -> str:
        return f"CREATE TABLE IF NOT EXISTS {cls.ISSUED_SEEDS} (seed_id VARCHAR PRIMARY KEY)"

    @classmethod
    def row_failures_ddl(cls) -> str:
        return f"CREATE OR REPLACE TABLE {cls.ROW_FAILURES} ({cls.ROW} BIGINT, {cls.RULE} VARCHAR)"
