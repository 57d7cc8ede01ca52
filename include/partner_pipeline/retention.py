"""How long each copy the pipeline writes outside the warehouse is kept: declared here, once.

This module is the declaration only, the *what*: it deletes nothing. RULES below is the one
declaration. Each rule names where the copies live (places), how a copy's date is read from its key
or file name (the date the copy is about: the drop date, the run date, the request date) and what
is deleted as one unit (units), and for how many days it is kept. A copy dated `d` kept `n` days
expires on `d + n` days (Rule.expires_on) and is deleted by the nightly data-rights step
(data_rights.expire_copies, the one place that deletes) on the first night whose retention date
(see nightly.retention_clock: never before the latest date built, so a backfill brings nothing
back) is on or after it, the same boundary as the partner rows in the tables (dbt macros
expires_on / is_expired, per drop in stg_pipeline__partner_drops). Every deletion is one row in
audit.data_deletions: reason 'retention', the location (a folder or a file), the partner and date
where known, the number of objects, never an identifier.

Two periods are declared elsewhere because their owner negotiates them, and referenced here:
- a partner's quarantined drops: the agreement's `retention_days` (agreements/*.yaml); a partner
  without an agreement gets NO_AGREEMENT_DAYS;
- the files delivered to an s3_file destination: its `file_retention_days` (destinations.yaml,
  default governance.DEFAULT_FILE_RETENTION_DAYS); remove files go sooner, once confirmed
  (activation.S3FileExport decides when; data_rights.delete_confirmed_removes deletes them).
The tables themselves follow the agreements (resolved by the models, deleted by
data_rights.apply_deletions); the DuckDB files are rewritten after a night that deleted rows
(warehouse.rewrite_warehouse).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from partner_pipeline.agreements import Agreement
from partner_pipeline.governance import Governance

DATE = r"(?P<date>\d{4}-\d{2}-\d{2})"
# quarantined drops of a partner with no agreement: long enough to sort out the agreement, no longer
NO_AGREEMENT_DAYS = 30
AGREEMENT, DESTINATION = "the partner's agreement", "the destination's file_retention_days"


@dataclass(frozen=True)
class Rule:
    what: str
    store: str  # "s3:<Settings bucket attribute>", "file:<Settings directory attribute>", or "outbox" / "activation"
    unit: re.Pattern  # matched at the start of a key (or path) below the store; what it matches is deleted as one unit
    days: int | str  # a number of days, or AGREEMENT / DESTINATION
    why: str

    @property
    def on_disk(self) -> bool:
        """The copies are local files (else objects)."""
        return self.store.startswith("file:")

    def days_for(self, partner_id: str | None, agreements: dict[str, Agreement]) -> int:
        if self.days == AGREEMENT:
            agreement = agreements.get(partner_id or "")
            return agreement.retention_days if agreement else NO_AGREEMENT_DAYS
        return int(self.days)

    def expires_on(self, day: dt.date, partner_id: str | None, place_days: int | None, agreements: dict[str, Agreement]) -> dt.date:
        """When a copy dated `day` expires: `day` + the days its place fixes (a destination's), else the rule's.
        It is deleted on the first night whose retention date is on or after that."""
        return day + dt.timedelta(days=place_days if place_days is not None else self.days_for(partner_id, agreements))


RULES: tuple[Rule, ...] = (
    Rule("quarantined drops", "s3:quarantine_bucket", re.compile(rf"(?P<partner>[^/]+)/{DATE}/"), AGREEMENT,
         "the partner's rows as delivered; an agreement's period, else NO_AGREEMENT_DAYS"),
    Rule("validation results and Data Docs", "file:validation_dir",
         re.compile(rf"[^/]+/(?P<partner>[a-z0-9_]+)__{DATE}__[^/]+\.(json|html)$"), 90,
         "counts per rule, no values; a quarter of history to compare partners' drops"),
    Rule("run reports", "file:reports_dir", re.compile(rf"{DATE}\.html$"), 90, "the report shows 30 run dates"),
    Rule("run reports", "s3:reports_bucket", re.compile(rf"{DATE}/"), 90, "as the local copies"),
    Rule("access request exports", "s3:first_party_bucket", re.compile(rf"access_exports/{DATE}/"), 30,
         "everything about a person: kept a month for them to download"),
    Rule("erasure receipts", "s3:first_party_bucket", re.compile(rf"erasure_receipts/{DATE}/"), 3 * 365,
         "proof an erasure was done (counts, no identifier): kept as long as a claim can be made"),
    Rule("erasure notices", "outbox", re.compile(rf"erasure/{DATE}\.csv$"), 30, "the partner collects them nightly"),
    Rule("overlap reports", "outbox", re.compile(rf"overlap/{DATE}\.(csv|json)$"), 30, "the partner collects them nightly"),
    Rule("seed sets", "outbox", re.compile(rf"seeds/{DATE}/"), 30,
         "a full set each night supersedes the earlier ones (deleted once it is written); this catches a set no later night replaced"),
    Rule("activation exports", "activation", re.compile(rf"(?P<segment>[^/]+)/{DATE}/"), DESTINATION,
         "hashes of our customers in our export bucket, kept as the destination needs them"),
)


def places(rule: Rule, settings, agreements: dict[str, Agreement], governance: Governance) -> list[tuple[str, str, int | None]]:
    """(bucket or directory, prefix, days if the place fixes them) for each place the rule covers."""
    kind, _, attribute = rule.store.partition(":")
    if kind == "s3":
        return [(getattr(settings, attribute), "", None)]
    if kind == "file":
        return [(str(getattr(settings, attribute)), "", None)]
    if kind == "outbox":  # each partner's outbox (an agreement may name its own), else the default one
        outboxes = {(settings.outbox_bucket, "")}  # covers every outbox in the default bucket
        for agreement in agreements.values():
            bucket, _, prefix = agreement.outbox(settings.outbox_bucket).removeprefix("s3://").partition("/")
            if bucket != settings.outbox_bucket:
                outboxes.add((bucket, prefix))
        return [(bucket, prefix, None) for bucket, prefix in sorted(outboxes)]
    found: list[tuple[str, str, int | None]] = []
    for destination_id, destination in sorted(governance.destinations.items()):
        if destination.type == "s3_file":
            bucket, _, prefix = destination.export_uri(destination_id, settings.activation_bucket).removeprefix("s3://").partition("/")
            found.append((bucket, prefix, destination.file_retention))
    return found


def units(names: list[str], rule: Rule) -> dict[str, tuple[dict, list[str]]]:
    """What the rule's pattern matches among the names (keys or paths below a place), grouped:
    unit (folder or file, deleted as one) -> (its groups: date, partner where the pattern has one; the names in it)."""
    outbox = rule.store == "outbox"
    found: dict[str, tuple[dict, list[str]]] = {}
    for name in names:
        if outbox:  # under the default outbox a partner's folder comes first: <partner>/erasure/<date>.csv
            match = re.match(rf"(?:(?P<owner>[^/]+)/)?(?P<rest>{rule.unit.pattern})", name)
            start = match.start("rest") if match else 0
            match = rule.unit.match(name, start) if match else None
        else:
            match = rule.unit.match(name)
        if match:
            found.setdefault(name[:match.end()], (match.groupdict(), []))[1].append(name)
    return found
