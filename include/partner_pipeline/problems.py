"""Problems found in a drop, each naming where it is and how to fix it."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    fix: str
    file: str | None = None
    field: str | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def __str__(self) -> str:
        where = ", ".join(f"{k} {v}" for k, v in (("file", self.file), ("field", self.field)) if v)
        return f"[{self.code}] {where + ': ' if where else ''}{self.message} Fix: {self.fix}"


def scrub_paths(text: str, replacements: dict[str, str]) -> str:
    """Replace worker-local paths with what the reader knows them as (object keys, "<data dir>"); longest first,
    so a file's path is replaced before the folder holding it."""
    for local, public in sorted(replacements.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(local, public)
    return text


def internal_error(exc: BaseException, where: str, replacements: dict[str, str]) -> Problem:
    """A fault of the pipeline while handling one drop: quarantines that drop alone and says what broke."""
    return Problem("internal_error", f"the pipeline failed on this drop: {type(exc).__name__}: {scrub_paths(str(exc), replacements)}",
                   "A pipeline fault, not necessarily the partner's: the data engineers fix it from the ingest task's log; "
                   "the drop is processed again by the next run of the date (no re-delivery needed).", file=where)


class DropRejected(Exception):
    """The whole drop is quarantined; nothing of it reaches the warehouse."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))
