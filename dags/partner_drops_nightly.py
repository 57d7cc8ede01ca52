"""Nightly run: discover the date's drops, ingest each (mapped), publish them, load our own
profiles, build the dbt models (matching, enrichment, segments, audiences), send the segments'
changes to their destinations, and publish the analysts' copy.

Logic lives in partner_pipeline.nightly; this file only wires tasks. The business date D of a
run is its logical date: the 02:00 UTC run after D closes processes the drops dated D.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from partner_pipeline.alerts import DropAlertNotifier  # light modules: no pipeline work at parse time
from partner_pipeline.sequencing import PreviousDateDone
from partner_pipeline.settings import NIGHT_MAX_ACTIVE_TASKS, task_pool


@dag(
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # dates build the marts in order, as sequential nightly runs would
    max_active_tasks=NIGHT_MAX_ACTIVE_TASKS,
    # Retries are for passing faults (object storage, the warehouse lock, disk): soon, then backing off
    # (20 s, 40 s, 80 s). Errors no retry fixes fail at once (nightly.task_errors); a drop's own faults never fail a task.
    default_args={"retries": 3, "retry_delay": pendulum.duration(seconds=20), "retry_exponential_backoff": 2.0,
                  "max_retry_delay": pendulum.duration(minutes=5), "on_failure_callback": DropAlertNotifier()},
    params={"full_refresh_activation": Param(False, type="boolean",
                                             description="Resend every segment in full instead of only the changes."),
            "full_refresh_models": Param(False, type="boolean",
                                         description="Rebuild the incremental dbt models (the profiles' hashes) from scratch "
                                                     "instead of applying only what changed.")},
    tags=["partner-data", "ingestion", "activation"],
    doc_md=__doc__,
)
def partner_drops_nightly():
    @task(pool=task_pool("discover"))
    def discover(logical_date=None, run_id=None) -> list[dict]:
        from partner_pipeline import nightly

        with nightly.task_errors():
            return [drop.to_xcom() for drop in nightly.discover(logical_date.date(), run_id)]

    @task(map_index_template="{{ drop_name }}", on_success_callback=DropAlertNotifier())
    def ingest(drop: dict, run_id=None) -> dict:
        from airflow.sdk import get_current_context

        from partner_pipeline import nightly
        from partner_pipeline.contracts import DropOutcome

        outcome = DropOutcome.from_xcom(drop)
        get_current_context()["drop_name"] = f"{outcome.name} ({outcome.status})"
        with nightly.task_errors():
            return nightly.ingest(outcome, run_id).to_xcom()

    @task(pool=task_pool("publish"), trigger_rule="none_failed")
    def publish(outcomes: list[dict], logical_date=None, run_id=None) -> dict:
        from partner_pipeline import nightly
        from partner_pipeline.contracts import DropOutcome

        with nightly.task_errors():
            return nightly.publish([DropOutcome.from_xcom(o) for o in outcomes or []], logical_date.date(), run_id)

    @task(pool=task_pool("load_first_party"))
    def load_first_party(logical_date=None) -> dict:
        """Our profiles in force on the date, and data subjects' erasure and access requests."""
        from partner_pipeline import nightly

        with nightly.task_errors():
            return nightly.load_first_party(logical_date.date())

    @task(pool=task_pool("transform"))
    def transform(logical_date=None, run_id=None, params=None) -> dict:
        """dbt build: staging -> matching -> enrichment -> segments -> audiences, and the usage-policy check."""
        from partner_pipeline import nightly

        with nightly.task_errors():
            return nightly.transform(logical_date.date(), run_id, full_refresh=bool(params.get("full_refresh_models")))

    @task(pool=task_pool("data_rights"))
    def data_rights(logical_date=None, run_id=None) -> dict:
        """Erasure notices and receipts, quarantined copies past retention or of erased people, access exports."""
        from partner_pipeline import nightly

        with nightly.task_errors():
            return nightly.data_rights(logical_date.date(), run_id)

    @task(pool=task_pool("share_overlap_reports"))
    def share_overlap_reports(logical_date=None, run_id=None) -> dict:
        """Each partner's overlap report (groups under its minimum size withheld; noised where agreed) to its outbox."""
        from partner_pipeline import nightly

        with nightly.task_errors():
            return nightly.share_overlap_reports(logical_date.date(), run_id)

    @task(pool=task_pool("export_seeds"))
    def export_seeds(logical_date=None, run_id=None) -> list[dict]:
        """Each seed-enabled agreement's seed set (consenting customers, hashed, with seed_ids) to the partner's outbox."""
        from partner_pipeline import nightly

        with nightly.task_errors():
            return nightly.export_seeds(logical_date.date(), run_id)

    @task(pool=task_pool("activate"))
    def activate(logical_date=None, run_id=None, params=None) -> list[dict]:
        """Send segment changes to the destinations the usage policies allow."""
        from partner_pipeline import nightly

        with nightly.task_errors():
            return nightly.activate(logical_date.date(), run_id, full_refresh=bool(params.get("full_refresh_activation")))

    # all_done: analysts get tonight's marts even when a destination is down (it checks the build succeeded)
    @task(pool=task_pool("publish_marts"), trigger_rule="all_done")
    def publish_marts(logical_date=None, run_id=None) -> dict:
        """The analysts' read-only copy: marts and activation log."""
        from airflow.exceptions import AirflowSkipException

        from partner_pipeline import nightly

        try:
            with nightly.task_errors():
                return nightly.publish_marts(logical_date.date(), run_id)
        except nightly.ModelsNotBuilt as exc:
            raise AirflowSkipException(str(exc)) from exc

    # after every run, also a failed one; a teardown, so its own outcome never decides the run's state
    @task(pool=task_pool("report"))  # it appends segment sizes (segment_size_history)
    def report(logical_date=None, run_id=None) -> dict:
        """The run report (HTML figures) in data/reports, object storage and the UI (Browse > Run reports)."""
        from partner_pipeline import run_report

        return run_report.write_report(logical_date.date(), run_id)

    @task
    def night_succeeded() -> None:
        """The run's verdict: publish_marts runs even after a failure (all_done), so this leaf fails the
        run whenever any task of the night did."""

    # a backfill starts its dates together: each waits for the previous date's run (see partner_pipeline.sequencing)
    published = publish(ingest.expand(drop=PreviousDateDone(task_id="previous_date_done") >> discover()))
    sends = [activate(), share_overlap_reports(), export_seeds()]
    published >> load_first_party() >> transform() >> data_rights() >> sends
    marts = publish_marts()
    sends >> marts >> report().as_teardown()
    [*sends, marts] >> night_succeeded()


partner_drops_nightly()
