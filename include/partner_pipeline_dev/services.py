"""The embedded defaults `make run`, `make demo` and `make airflow` start for what is not configured:
the S3 server over data/s3, a local audience API per HTTP destination without a connection, and a
seed_id key (data/secrets/) per seed-enabled agreement whose Airflow Variable is not set."""

from __future__ import annotations

import json
import os
import secrets
from contextlib import ExitStack, contextmanager
from collections.abc import Iterator

from partner_pipeline.agreements import load_agreements
from partner_pipeline.governance import load_governance
from partner_pipeline.settings import Settings
from partner_pipeline_dev.local_audience_api import AudienceApi
from partner_pipeline_dev.local_s3 import local_s3


@contextmanager
def embedded_services(settings: Settings) -> Iterator[dict[str, str]]:
    """The embedded defaults for what is not configured: the S3 server over data/s3 (unless
    PIPELINE_S3_ENDPOINT_URL is set) and a local audience API for each HTTP destination whose
    Airflow connection is not set (AIRFLOW_CONN_<ID>). Yields the environment the run needs."""
    env: dict[str, str] = {}
    with ExitStack() as stack:
        if not settings.s3_endpoint_url:
            buckets = [settings.landing_bucket, settings.first_party_bucket, settings.quarantine_bucket,
                       settings.outbox_bucket, settings.activation_bucket, settings.reports_bucket]
            server = stack.enter_context(local_s3(settings.data_dir / "s3", buckets))
            env.update(server.env())
            print(f"S3 server (SeaweedFS) on {server.endpoint_url}, store in {settings.data_dir / 's3'}")
        agreements = load_agreements(settings.agreements_dir)
        for agreement in agreements.values():  # seed_id keys: a demo key per agreement, never committed (data/ is ignored)
            variable = f"AIRFLOW_VAR_{agreement.seed_set.secret_variable.upper()}" if agreement.seed_set else None
            if variable is None or variable in os.environ:
                continue
            env[variable] = demo_secret(settings, agreement.seed_set.secret_variable)
            print(f"seed key of {agreement.partner_id} from {settings.data_dir / 'secrets' / agreement.seed_set.secret_variable}")
        governance = load_governance(settings.governance_dir, agreements)
        for destination_id, destination in governance.destinations.items():
            variable = f"AIRFLOW_CONN_{destination.connection_id.upper()}" if destination.connection_id else None
            if variable is None or variable in os.environ:
                continue
            state = settings.data_dir / "audience_api" / f"{destination_id}.json"
            api = stack.enter_context(AudienceApi(token=secrets.token_urlsafe(16), hash_profile=destination.hash_profile,
                                                  state_file=state, max_batch_size=destination.rows_per_batch))
            env[variable] = json.dumps({"conn_type": "http", "host": api.url, "password": api.token})
            print(f"audience API for destination {destination_id} on {api.url}, audiences in {state}")
        # the servers stop on the way out, so what points at them leaves the environment too
        before = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            yield env
        finally:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def demo_secret(settings: Settings, name: str) -> str:
    """A local demo secret: data/secrets/<name>, made once (0600, 64 random hex characters) and kept."""
    path = settings.data_dir / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip()
