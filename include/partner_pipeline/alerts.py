"""Alerts: a failed task or a quarantined drop posts a message to a webhook.

The target is PIPELINE_ALERT_WEBHOOK_URL (any endpoint that takes a JSON POST: Slack or Teams
incoming webhooks, an incident tool); without it, alerts are only logged. An alert never fails
the run it reports on. Light on purpose: the DAG file imports this module at parse time.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request

from airflow.sdk import BaseNotifier

from partner_pipeline.contracts import DropOutcome

log = logging.getLogger(__name__)


def post_alert(message: dict, attempts: int = 3) -> bool:
    """POST the message as JSON; True once the webhook accepted it (2xx)."""
    url = os.environ.get("PIPELINE_ALERT_WEBHOOK_URL")
    log.warning("ALERT %s", message["text"])
    if not url:
        return False
    body = json.dumps(message).encode()
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if 200 <= response.status < 300:
                    return True
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            log.warning("alert webhook attempt %d/%d failed: %s", attempt, attempts, exc)
        time.sleep(min(2 ** attempt, 10) if attempt < attempts else 0)
    log.error("alert webhook %s did not accept the alert after %d attempts", url, attempts)
    return False


def quarantine_message(outcome: DropOutcome, run_id: str) -> dict:
    problems = list(outcome.problems)
    reasons = "; ".join(f"{p['code']}: {p.get('file', '')} {p['message']}".replace("  ", " ") for p in problems)
    return {
        "text": f"Partner drop {outcome.partner_id}/{outcome.drop_date} (delivery {outcome.delivery_id}) "
                f"was quarantined in run {run_id}: {reasons}",
        "kind": "drop_quarantined", "partner_id": outcome.partner_id, "drop_date": outcome.drop_date,
        "delivery_id": outcome.delivery_id, "run_id": run_id, "report": outcome.quarantine_report,
        "problems": problems,
    }


class DropAlertNotifier(BaseNotifier):
    """on_failure_callback of every task; on_success_callback of `ingest`, where it reports a quarantined drop."""

    def notify(self, context) -> None:
        ti = context["ti"]
        run_id = context["run_id"]
        if str(ti.state).endswith("failed") or context.get("exception") is not None:
            post_alert({
                "text": f"Task {ti.task_id} (map index {ti.map_index}) of {ti.dag_id} run {run_id} failed: "
                        f"{context.get('exception')}",
                "kind": "task_failed", "dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": run_id,
            })
            return
        pulled = ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index)
        outcome = DropOutcome.from_xcom(pulled) if isinstance(pulled, (dict, DropOutcome)) else None
        if outcome is not None and outcome.status == "quarantined":
            post_alert(quarantine_message(outcome, run_id))
