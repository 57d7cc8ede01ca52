import json

import pytest

from partner_pipeline.agreements import load_agreements
from partner_pipeline.drops import DropRef, parse_manifest
from partner_pipeline.problems import DropRejected
from partner_pipeline.settings import PROJECT_ROOT

ACME = load_agreements(PROJECT_ROOT / "include" / "agreements")["acme_bank"]
SHA = "a" * 64


def drop(*keys):
    objects = tuple((k, 10, "etag") for k in ("manifest.json", *keys))
    return DropRef("acme_bank", "2026-11-21", "landing", "acme_bank/2026-11-21/", "d1", "2026-11-22T01:00:00+00:00", objects)


def manifest(**changes):
    base = {"partner_id": "acme_bank", "agreement_id": "acme-2026-01", "drop_date": "2026-11-21", "schema_version": 1,
            "files": [{"key": "records-000.csv.gz", "rows": 5, "sha256": SHA}], "record_count": 5}
    base.update(changes)
    return json.dumps(base).encode()


def problems(raw, ref=None):
    with pytest.raises(DropRejected) as raised:
        parse_manifest(ref or drop("records-000.csv.gz"), raw, ACME)
    return raised.value.problems


def test_good_manifest_parses():
    files = parse_manifest(drop("records-000.csv.gz"), manifest(), ACME)
    assert [(f.key, f.rows, f.sha256) for f in files] == [("records-000.csv.gz", 5, SHA)]


def test_key_outside_prefix_is_named():
    raw = manifest(files=[{"key": "../other_partner/2026-11-21/records-000.csv.gz", "rows": 5, "sha256": SHA}])
    [problem] = [p for p in problems(raw) if p.code == "key_outside_prefix"]
    assert problem.field == "files[0].key"
    assert "outside the drop folder acme_bank/2026-11-21/" in problem.message


@pytest.mark.parametrize("key", ["/abs/records.csv", "a/../../b.csv", "s3://x/y.csv", "..\\x.csv"])
def test_every_escape_is_outside(key):
    raw = manifest(files=[{"key": key, "rows": 5, "sha256": SHA}])
    assert "key_outside_prefix" in {p.code for p in problems(raw)}


@pytest.mark.parametrize(("field", "value"), [("partner_id", "globex_retail"), ("agreement_id", "acme-2025-01"), ("drop_date", "2026-11-20")])
def test_manifest_must_match_drop_and_agreement(field, value):
    [problem] = problems(manifest(**{field: value}))
    assert (problem.code, problem.field) == ("manifest_mismatch", field)


def test_invalid_json_missing_manifest_and_counts():
    assert problems(b"{not json")[0].code == "manifest_invalid_json"
    assert problems(None)[0].code == "manifest_missing"
    assert problems(manifest(record_count=6))[0].field == "record_count"
    assert problems(manifest(files=[]))[0].field == "files"
    bad_sha = problems(manifest(files=[{"key": "records-000.csv.gz", "rows": 5, "sha256": SHA.upper()}]))
    assert bad_sha[0].field == "files[0].sha256"


def test_listed_but_absent_and_present_but_unlisted():
    found = problems(manifest(), drop("records-001.csv.gz"))
    assert {(p.code, p.file) for p in found} == {
        ("missing_file", "acme_bank/2026-11-21/records-000.csv.gz"),
        ("unlisted_file", "acme_bank/2026-11-21/records-001.csv.gz"),
    }
