"""Uploading a local tree laid out <bucket>/<key> to object storage (`make run UPLOAD=...`, the generator's --upload)."""

from __future__ import annotations

from pathlib import Path

from partner_pipeline.storage import ensure_buckets


def upload_tree(client, root: Path) -> int:
    """Upload every <root>/<bucket>/<key> file (files directly under root, such as
    ground_truth.json, are skipped), creating missing buckets, and return the count.

    Every data file and manifest goes up before any _SUCCESS marker, so a folder that has a
    _SUCCESS gets it last and no drop looks complete while any object is still missing."""
    root = Path(root)
    paths = [p for p in sorted(root.rglob("*")) if p.is_file() and len(p.relative_to(root).parts) >= 2]
    paths.sort(key=lambda p: (p.name == "_SUCCESS", str(p.parent), p.name == "manifest.json", p.name))
    ensure_buckets(client, sorted({p.relative_to(root).parts[0] for p in paths}))
    for path in paths:
        bucket, *key = path.relative_to(root).parts
        client.upload_file(str(path), bucket, "/".join(key))
    return len(paths)
