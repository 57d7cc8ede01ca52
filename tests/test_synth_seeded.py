"""synth.seeded: a partner's seed-keyed drop from the seed set in its outbox, and its ground truth."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json

import pytest

from partner_pipeline.agreements import load_agreements
from partner_pipeline.settings import PROJECT_ROOT
from partner_pipeline_dev.synth.seeded import SeededDropSpec, SeedSet, write_seeded_drop
from partner_pipeline_dev import synth

PROFILES_SEED, N_PROFILES = 7, 300
AGREEMENTS = load_agreements(PROJECT_ROOT / "include" / "agreements")
DAY = dt.date(2026, 11, 20)


def seed_of(agreement_id: str, profile_id: str) -> str:
    """A stand-in for the export's keyed token: stable per (agreement, profile), unrelated across agreements."""
    return "S" + hashlib.sha256(f"test-secret/{agreement_id}/{profile_id}".encode()).hexdigest()[:31]


def write_seed_set(root, outbox: str, agreement, day: dt.date, persons: range) -> list[dict]:
    """The spec's seed set: seed_id plus the profile's identifiers hashed as the partner hashes them
    (only for persons whose typed email or phone normalizes to their base; others get a hash nobody has)."""
    people = synth.People(PROFILES_SEED, list(persons))
    emails_ok, phones_ok = people.email_matches(agreement.hash_profile), people.phone_matches(agreement.default_country_code)
    rows = []
    for i, pid, email, phone, e_ok, p_ok in zip(people.idx.tolist(), synth.profile_ids(people.idx).to_pylist(),
                                                people.base_emails().to_pylist(), people.base_phones().to_pylist(),
                                                emails_ok.tolist(), phones_ok.tolist()):
        email_hash, phone_hash = synth.partner_hashes(email, phone, agreement.hash_profile)
        rows.append({"seed_id": seed_of(agreement.agreement_id, pid), "profile_id": pid,
                     "email_sha256": email_hash if e_ok else hashlib.sha256(f"typed/{i}".encode()).hexdigest(),
                     "phone_sha256": phone_hash if p_ok else None})
    folder = root / outbox / agreement.partner_id / "seeds" / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    text = "seed_id,email_sha256,phone_sha256\n" + "".join(
        f"{r['seed_id']},{r['email_sha256']},{r['phone_sha256'] or ''}\n" for r in rows)
    data = gzip.compress(text.encode(), mtime=0)
    (folder / "seeds-000.csv.gz").write_bytes(data)
    (folder / "manifest.json").write_text(json.dumps({
        "kind": "seed_set", "mode": "full", "partner_id": agreement.partner_id, "agreement_id": agreement.agreement_id,
        "drop_date": day.isoformat(), "record_count": len(rows),
        "files": [{"key": "seeds-000.csv.gz", "rows": len(rows), "sha256": hashlib.sha256(data).hexdigest()}]}))
    (folder / "_SUCCESS").write_bytes(b"")
    return rows


@pytest.fixture
def seed_sets(tmp_path):
    acme, globex = AGREEMENTS["acme_bank"], AGREEMENTS["globex_retail"]
    write_seed_set(tmp_path, "outbox", acme, DAY, range(50, 90))
    rows = write_seed_set(tmp_path, "outbox", globex, DAY, range(0, 250))
    folder = tmp_path / "outbox" / "{}" / "seeds" / DAY.isoformat()
    return rows, str(folder)


def test_truth_follows_the_seed_files_hashes_and_the_bytes_are_stable(seed_sets, tmp_path):
    rows, folder = seed_sets
    # globex hashes under uid2, where a googlemail.com address typed by the customer is not the partner's
    spec = SeededDropSpec(AGREEMENTS["globex_retail"], DAY, tmp_path / folder.format("globex_retail"),
                          foreign_seed_set=tmp_path / folder.format("acme_bank"), foreign_rows=2,
                          refresh={"GLOBEX-000000000042": "p0000000009", "GLOBEX-999999999999": None})
    truth = write_seeded_drop(tmp_path / "a", "landing", spec, PROFILES_SEED, N_PROFILES, seed=4)
    again = write_seeded_drop(tmp_path / "b", "landing", spec, PROFILES_SEED, N_PROFILES, seed=4)
    assert truth == again
    for name in ("records-000.csv.gz", "manifest.json", "_SUCCESS"):
        assert (tmp_path / "a" / "landing" / spec.prefix / name).read_bytes() == (tmp_path / "b" / "landing" / spec.prefix / name).read_bytes()
    # each returned seed names the profile it was issued for, though the generator only saw hashes
    issued_for = {r["seed_id"]: r["profile_id"] for r in rows}
    seed_rows = {rid for rid, kind in truth["record_kinds"].items() if kind in ("seed", "seed_and_hashes")}
    assert len(seed_rows) == len(truth["seeds_returned"]) > 60
    # a seed whose email hash is of an address the partner never saw is found by its phone hash, or not at all
    typed = {hashlib.sha256(f"typed/{i}".encode()).hexdigest() for i in range(250)}
    by_phone_only = {r["seed_id"]: r["phone_sha256"] for r in rows if r["email_sha256"] in typed}
    assert by_phone_only and all(by_phone_only[s] for s in set(truth["seeds_returned"]) & set(by_phone_only))
    manifest = json.loads((tmp_path / "a" / "landing" / spec.prefix / "manifest.json").read_text())
    assert manifest["record_count"] == truth["rows_total"] == len(seed_rows) + 2 + 2 + 2
    returned_profiles = {issued_for[s] for s in truth["seeds_returned"]}
    assert returned_profiles == {pid for rid, pid in truth["expected_profiles"].items() if rid in seed_rows}
    kinds = truth["record_kinds"]
    # globex's agreement (as in the project) does not allow partner-id-only rows: they are expected invalid
    assert not AGREEMENTS["globex_retail"].partner_id_only_rows
    assert truth["expected_invalid"] == {
        "seed_id_unknown": [rid for rid, k in kinds.items() if k in ("foreign_seed", "made_up_seed")],
        "identifier_missing": [rid for rid, k in kinds.items() if k == "partner_id_only"]}


def test_a_seed_set_of_another_agreement_or_with_changed_bytes_is_refused(seed_sets, tmp_path):
    _, folder = seed_sets
    globex_set = tmp_path / folder.format("globex_retail")  # given as acme's
    with pytest.raises(ValueError, match="a seed set of globex_retail/globex-2026-03, not of acme_bank/acme-2026-01"):
        write_seeded_drop(tmp_path, "landing", SeededDropSpec(AGREEMENTS["acme_bank"], DAY, globex_set, foreign_rows=0),
                          PROFILES_SEED, N_PROFILES, seed=1)
    (globex_set / "seeds-000.csv.gz").write_bytes(b"not the file")
    with pytest.raises(ValueError, match="do not hash to the manifest's sha256"):
        SeedSet.read(globex_set)
