"""Dates run in order, even in a backfill: the DAG's first task waits for the previous date's run.

Why: a backfill's own max_active_runs overrides the DAG's max_active_runs=1, so its dates start
together. The one-slot warehouse pool keeps writers apart one task at a time, not one run at a time:
the dates would interleave stage by stage, and an earlier date would then send (and report) the
audiences a later date built. Chained by this task, every date ends as its own nightly run would.

Imported by the DAG file at parse time: light imports only.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import BaseOperator


class PreviousDateDone(BaseOperator):
    """Succeeds once the DAG's run of the previous logical date is not running (finished, in any
    state, or absent). While it runs, the task is deferred: no worker slot, no polling process; the
    triggerer checks every few seconds. A scheduled night finds its previous night done and goes on.
    A queued previous run is not waited for: in a backfill run backwards it starts only after this one.
    Only the previous date is waited for: a nightly run due while a backfill of older dates runs does
    not wait for it (start backfills between nights)."""

    ui_color = "#e3ecf7"

    def __init__(self, *, poll_interval: float = 5.0, max_wait: dt.timedelta = dt.timedelta(hours=12), **kwargs):
        super().__init__(**kwargs)
        self.poll_interval, self.max_wait = poll_interval, max_wait

    def execute(self, context, event=None) -> None:
        if context["dag_run"].run_type == "manual":  # `airflow dags test` (make run/demo), a UI trigger: started by
            return  # hand, one at a time; never left waiting on a run a killed `dags test` left "running"
        previous = context["ti"].get_previous_dagrun()
        if previous is None or previous.state != "running":
            return
        from airflow.providers.standard.triggers.external_task import DagStateTrigger

        self.log.info("waiting for run %s of the previous date to finish (at most %s)", previous.run_id, self.max_wait)
        self.defer(trigger=DagStateTrigger(dag_id=self.dag_id, states=["success", "failed"], run_ids=[previous.run_id],
                                           poll_interval=self.poll_interval),
                   method_name="execute", timeout=self.max_wait)
