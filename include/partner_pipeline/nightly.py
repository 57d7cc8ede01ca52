"""What the nightly DAG's tasks do, as plain functions of the run's date and id (tested directly)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from contextlib import contextmanager

from partner_pipeline import activation, data_rights as rights, first_party, insights, seeds
from partner_pipeline.agreements import AgreementError, load_agreements
from partner_pipeline.contracts import DropOutcome
from partner_pipeline.governance import GovernanceError, load_governance
from partner_pipeline.drops import find_complete_drops
from partner_pipeline.ingest import ingest_drop, processing_key
from partner_pipeline.settings import load_settings
from partner_pipeline.storage import client_from_settings, ensure_buckets
from partner_pipeline.transform import ModelBuildFailed, build_models, publish_for_analysts, published_marts, published_summary
from partner_pipeline.warehouse import (commit_outcome, erased_people_still_on_destinations, last_processing_keys, publish_agreements, publish_governance,
                                        publish_outcome, rewrite_if_owed, rewrite_warehouse, warehouse)

log = logging.getLogger(__name__)

# Errors no retry fixes: a person must change a file (agreement, governance) or the data/models (a failed dbt test).
NOT_RETRYABLE = (AgreementError, GovernanceError, ModelBuildFailed)
_TRANSIENT_WORDS = ("could not set lock", "no space left", "out of memory")


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, ModelBuildFailed):  # dbt fails the same way for a locked file or a full disk: those retry
        return any(word in str(exc).lower() for word in _TRANSIENT_WORDS)
    return not isinstance(exc, NOT_RETRYABLE)


@contextmanager
def task_errors():
    """Around each DAG task: an error no retry fixes fails the task at once (AirflowFailException), without
    the retries and their delays; any other error (object storage, the warehouse lock, disk) retries."""
    try:
        yield
    except Exception as exc:
        if is_retryable(exc):
            raise
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"{type(exc).__name__}: {exc}\n(a retry would fail the same way: fix the cause, "
                                   f"then clear the task)") from exc


def discover(day: dt.date, run_id: str) -> list[DropOutcome]:
    """Every drop folder of `day`, marked `new` (to ingest), `skipped` (unchanged since processed)
    or `incomplete` (no `_SUCCESS` yet: left for a later run). The DAG passes them on as XCom (to_xcom)."""
    settings = load_settings()
    agreements = load_agreements(settings.agreements_dir)  # a bad agreement file fails the run here, loudly
    client = client_from_settings(settings)
    ensure_buckets(client, [settings.quarantine_bucket])
    complete, incomplete = find_complete_drops(client, settings.landing_bucket, day)
    with warehouse(settings) as con:  # a write session: it declares the tables the drops' tasks then write
        done = last_processing_keys(con, day)
    found = []
    for drop in complete:
        key = processing_key(drop, agreements.get(drop.partner_id))
        status = "skipped" if done.get(drop.partner_id) == key else "new"
        found.append(DropOutcome.of_drop(drop, status=status, run_id=run_id, processing_key=key))
    found += [DropOutcome(partner_id=prefix.split("/")[0], drop_date=day.isoformat(), prefix=prefix, status="incomplete",
                          run_id=run_id) for prefix in incomplete]
    log.info("%s: %s", day, {s: sum(d.status == s for d in found) for s in ("new", "skipped", "incomplete")})
    return found


def ingest(drop: DropOutcome, run_id: str) -> DropOutcome:
    """Ingest a `new` drop; pass the others through to publish unchanged. A drop's own faults, ours included
    (internal_error), quarantine it; only faults every drop shares raise (see ingest.is_infrastructure_fault).
    On the lake the drop's outcome (any status) is committed here, and publish leaves it be."""
    settings = load_settings()
    if drop.status != "new":
        return commit_outcome(settings, drop, {}) if settings.warehouse_kind == "lake" else drop
    agreements = load_agreements(settings.agreements_dir)
    outcome = ingest_drop(client_from_settings(settings), drop.drop_ref(), agreements, run_id, settings)
    log.info("%s/%s delivery %s: %s, %d rows received, %d valid, %d quarantined%s", outcome.partner_id,
             outcome.drop_date, outcome.delivery_id, outcome.status, outcome.rows_received,
             outcome.rows_valid, outcome.rows_quarantined,
             "".join(f"\n  {p['code']}: {p.get('file', '')} {p['message']}" for p in outcome.problems))
    # on the lake each drop's task commits its own rows, from any worker, beside the others (no shared stage)
    return commit_outcome(settings, outcome, agreements) if settings.warehouse_kind == "lake" else outcome


def publish(outcomes: list[DropOutcome], day: dt.date, run_id: str) -> dict:
    settings = load_settings()
    agreements = load_agreements(settings.agreements_dir)
    governance = load_governance(settings.governance_dir, agreements)
    with warehouse(settings) as con:
        for outcome in outcomes:
            publish_outcome(con, outcome, agreements)
        publish_agreements(con, agreements, settings.outbox_bucket)
        publish_governance(con, governance, settings.activation_bucket)
    summary = {
        "drop_date": day.isoformat(), "run_id": run_id,
        "drops": {o.partner_id: {"status": o.status, "delivery_id": o.delivery_id, "rows_received": o.rows_received,
                                 "rows_valid": o.rows_valid, "rows_quarantined": o.rows_quarantined,
                                 "failures_by_rule": o.failures_by_rule, "dropped_columns": list(o.dropped_columns),
                                 "problems": [p["code"] for p in o.problems]} for o in outcomes},
    }
    log.info("published %s", summary)
    return summary


def load_first_party(day: dt.date) -> dict:
    """Our profiles in force on the date, and the data subjects' erasure and access requests up to it."""
    settings = load_settings()
    client = client_from_settings(settings)
    with warehouse(settings) as con:
        loaded = first_party.load_snapshot(con, client, settings.first_party_bucket, day, settings.staging_dir / "first_party")
        for kind in rights.REQUEST_KINDS:
            loaded[f"{kind}_requests"] = rights.load_requests(con, client, settings.first_party_bucket, kind, day)
    return loaded


def transform(day: dt.date, run_id: str, full_refresh: bool = False) -> dict:
    """Build the dbt models for the date (matching, enrichment, segments, audiences, policy checks);
    full_refresh rebuilds the incremental models from scratch instead of applying what changed."""
    settings = load_settings()
    with warehouse(settings, read_only=True) as con:
        retention_date = retention_clock(con, day)
    timings = build_models(settings, day, run_id, retention_date, full_refresh=full_refresh)
    with warehouse(settings) as con:
        con.execute("INSERT INTO audit.model_builds VALUES (?, ?, now())", [day, run_id])
    slowest = dict(sorted(timings.items(), key=lambda kv: -kv[1])[:8])
    summary = {"models_built": len(timings), "slowest_dbt_nodes_seconds": slowest}
    log.info("models built: %s", summary)
    return summary


def retention_clock(con, day: dt.date) -> dt.date:
    """The date retention counts against: the latest date the pipeline has built, never before `day`,
    so a backfill of an old date never brings back what a later night let expire."""
    latest = con.execute("SELECT max(run_date) FROM audit.model_builds").fetchone()[0]
    return max(day, latest) if latest else day


def data_rights(day: dt.date, run_id: str) -> dict:
    """After the build (which resolved, and left out of every model, what retention and erasure take
    away: dbt only reads), everything data_rights.py does, the one module that deletes: the raw rows
    the models listed, with the suppression list and the deletion log (apply_deletions); delivered
    activation files scrubbed of the erased (scrub_delivered_files); partner notices and receipts for
    erasures (complete_erasures); access requests' exports (answer_access_requests); the copies outside
    the warehouse past their declared retention (expire_copies, as retention.py declares); then the
    warehouse file rewritten if rows were deleted tonight."""
    settings = load_settings()
    agreements = load_agreements(settings.agreements_dir)
    governance = load_governance(settings.governance_dir, agreements)
    client = client_from_settings(settings)
    ensure_buckets(client, [settings.outbox_bucket])
    with warehouse(settings) as con:
        retention_date = retention_clock(con, day)
        summary = {
            "rows_deleted": rights.apply_deletions(con, run_id),
            "issued_seeds_deleted": rights.delete_issued_seeds(con, run_id),
            "activation_files_scrubbed": rights.scrub_delivered_files(con, client, governance, settings.activation_bucket, run_id),
            "erasures": rights.complete_erasures(con, client, settings, agreements, day, run_id),
            "access_exports": rights.answer_access_requests(con, client, settings, day, run_id),
            "expired": rights.expire_copies(con, client, settings, agreements, governance, retention_date, run_id),
        }
        # deleted rows keep their bytes in freed blocks until the file is rewritten: a full copy, so only
        # on a night that deleted some (a table location has no '/'; answered requests' rows go too)
        deleted = con.execute("""SELECT count(*) FROM audit.data_deletions WHERE run_id = ? AND rows > 0
                                 AND position('/' IN location) = 0""", [run_id]).fetchone()[0]
        if summary["erasures"] and erased_people_still_on_destinations(con):
            # tonight's activation deletes their last rows (destination_members): rewrite again after it
            con.execute("INSERT INTO audit.rewrite_due VALUES (?, 'erased people leave the destinations', now())", [run_id])
    if deleted or summary["erasures"] or summary["access_exports"]:
        summary["warehouse_rewrite"] = rewrite_warehouse(settings)
    log.info("data rights: %s", summary)
    return json.loads(json.dumps(summary, default=str))


def share_overlap_reports(day: dt.date, run_id: str) -> dict:
    """Each partner's overlap report (suppressed, and noised where agreed) into its outbox."""
    settings = load_settings()
    agreements = load_agreements(settings.agreements_dir)
    with warehouse(settings) as con:
        shared = insights.share_overlap_reports(con, client_from_settings(settings), agreements, settings.outbox_bucket, day, run_id)
    log.info("overlap reports: %s", shared)
    return shared


def export_seeds(day: dt.date, run_id: str) -> list[dict]:
    """Each seed-enabled agreement's seed set to its partner's outbox (seeds.py); an agreement without a
    usable key is refused (its audit row and the run report say why), the others still export."""
    settings = load_settings()
    agreements = load_agreements(settings.agreements_dir)
    with warehouse(settings) as con:
        exports = seeds.export_seed_sets(con, client_from_settings(settings), settings, agreements, day, run_id)
    log.info("seed sets: %s", exports)
    return exports


def activate(day: dt.date, run_id: str, full_refresh: bool = False) -> list[dict]:
    """Send each segment's changes to its destinations, re-checking the usage policies against the
    agreements and governance files as they are now."""
    settings = load_settings()
    agreements = load_agreements(settings.agreements_dir)
    governance = load_governance(settings.governance_dir, agreements)
    client = client_from_settings(settings)
    ensure_buckets(client, [settings.activation_bucket])
    try:
        with warehouse(settings) as con:
            publish_agreements(con, agreements, settings.outbox_bucket)  # what the send-time policy check reads
            publish_governance(con, governance, settings.activation_bucket)
            return activation.activate(con, governance, activation.Run(run_id, day, full_refresh), client, settings.activation_bucket)
    finally:
        rewrite_if_owed(settings)  # erased people's last rows (what destinations held) leave the file's bytes too


def publish_marts(day: dt.date, run_id: str) -> dict:
    """Publish the analysts' copy (marts and activation log), if this run's models were built."""
    settings = load_settings()
    with warehouse(settings, read_only=True) as con:
        built = con.execute("SELECT count(*) FROM audit.model_builds WHERE run_id = ?", [run_id]).fetchone()[0]
    if not built:
        raise ModelsNotBuilt(f"run {run_id} did not build the models (see its transform task); the published copy "
                             f"stays as it was. Re-run transform, then this task.")
    published = publish_for_analysts(settings, day, run_id)
    with published_marts(settings) as con:
        summary = {"published": published, **published_summary(con, day)}
    log.info("published: %s", summary)
    return json.loads(json.dumps(summary, default=str))  # XCom-safe: dates and decimals as text


class ModelsNotBuilt(RuntimeError):
    pass
