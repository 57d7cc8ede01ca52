"""`make analyst`: partner_pipeline.analysts on the embedded defaults, with the local S3 server over
data/s3 running while the session lasts (a lake's files are in it) unless PIPELINE_S3_ENDPOINT_URL is set."""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack

from partner_pipeline import analysts
from partner_pipeline.settings import load_settings
from partner_pipeline_dev.local_s3 import local_s3


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    with ExitStack() as stack:
        if settings.warehouse_kind == "lake" and not settings.s3_endpoint_url:
            os.environ.update(stack.enter_context(local_s3(settings.data_dir / "s3")).env())
        return analysts.main(argv)


if __name__ == "__main__":
    sys.exit(main())
