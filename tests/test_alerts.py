"""Alerts reach a real webhook on loopback, with retries, and never fail a run."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from partner_pipeline.alerts import post_alert, quarantine_message
from partner_pipeline.contracts import DropOutcome


class Webhook:
    """A loopback HTTP server that records JSON posts and answers with the scripted status codes."""

    def __init__(self, statuses=(200,)):
        self.received: list[dict] = []
        self.statuses = list(statuses)
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                status = hook.statuses.pop(0) if len(hook.statuses) > 1 else hook.statuses[0]
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook(monkeypatch):
    with Webhook(statuses=(500, 200)) as hook:
        monkeypatch.setenv("PIPELINE_ALERT_WEBHOOK_URL", hook.url)
        yield hook


def test_quarantine_alert_names_partner_drop_and_reasons(webhook, monkeypatch):
    monkeypatch.setattr("partner_pipeline.alerts.time.sleep", lambda s: None)
    outcome = DropOutcome(partner_id="acme_bank", drop_date="2026-11-21", prefix="acme_bank/2026-11-21/", delivery_id="d1",
                          status="quarantined", run_id="run-1", quarantine_report="s3://q/r.json",
                          problems=[{"code": "checksum_mismatch", "file": "acme_bank/2026-11-21/records-000.csv.gz",
                                     "message": "file bytes hash to x, the manifest says y.", "fix": "Re-upload."}])
    assert post_alert(quarantine_message(outcome, "run-1")) is True
    assert len(webhook.received) == 2  # a 500, then accepted on the retry
    text = webhook.received[-1]["text"]
    assert "acme_bank/2026-11-21" in text and "checksum_mismatch" in text and "records-000.csv.gz" in text
    assert webhook.received[-1]["problems"][0]["fix"] == "Re-upload."


def test_unreachable_webhook_never_raises(monkeypatch):
    monkeypatch.setenv("PIPELINE_ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    monkeypatch.setattr("partner_pipeline.alerts.time.sleep", lambda s: None)
    assert post_alert({"text": "x"}) is False
    monkeypatch.delenv("PIPELINE_ALERT_WEBHOOK_URL")
    assert post_alert({"text": "x"}) is False
