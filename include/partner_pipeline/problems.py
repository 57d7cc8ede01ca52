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


class DropRejected(Exception):
    """The whole drop is quarantined; nothing of it reaches the warehouse."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))
