"""Seeds and partner ids in drops (spec v2 "Seeds in drops", "Partner ids"), two nights end to end.

The seed sets are written here in the spec's outbox format and their seeds put in raw.issued_seeds
(the seed export is another module's); the partners' answers come from synth.seeded, whose ground
truth maps seeds to people through the seed files' hashes. Night 1: acme_bank (partner-id-only rows
allowed) and globex_retail (not allowed) send seed-keyed drops carrying each other's seeds and made-up
ones. Night 2: one person withdrew consent_partner_sharing, another is erased by profile id, and acme
refreshes a linked person and an unknown one by partner id alone.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json

import pytest

from conftest import run_night
from partner_pipeline.agreements import load_agreements
from partner_pipeline.settings import load_settings
from partner_pipeline.warehouse import rewrite_warehouse, warehouse
from partner_pipeline_dev import synth
from partner_pipeline_dev.synth.seeded import SeededDropSpec, SeedSet, write_seeded_drop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

D1, D2 = dt.date(2026, 11, 20), dt.date(2026, 11, 21)
PROFILES_SEED, N_PROFILES = 7, 300


def seed_of(agreement_id: str, profile_id: str) -> str:
    """A stand-in for the export's keyed token: stable per (agreement, profile), unrelated across agreements."""
    return "S" + hashlib.sha256(f"test-secret/{agreement_id}/{profile_id}".encode()).hexdigest()[:31]


def write_profiles(root, bucket: str, day: dt.date, not_sharing: set[str]) -> dict[str, int]:
    """A snapshot of the synthetic customers with consent_partner_sharing (true unless listed); profile id -> person."""
    people = synth.describe_persons(PROFILES_SEED, range(N_PROFILES)).to_pylist()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["profile_id", "email", "phone", "country", "consent_marketing", "consent_partner_sharing"])
    for p in people:
        writer.writerow([p["profile_id"], p["raw_email"], p["raw_phone"] or "", "US", "true",
                         "false" if p["profile_id"] in not_sharing else "true"])
    folder = root / bucket / "profiles" / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "profiles.csv").write_text(out.getvalue())
    (folder / "_SUCCESS").write_bytes(b"")
    return {p["profile_id"]: p["person_index"] for p in people}


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


def issue(settings, agreement, rows: list[dict], day: dt.date) -> None:
    """What the seed export records (raw.issued_seeds, audit.seed_exports), as it would."""
    with warehouse(settings) as con:
        con.executemany("INSERT INTO raw.issued_seeds VALUES (?, ?, ?, ?, ?, ?)",
                        [[agreement.partner_id, agreement.agreement_id, r["seed_id"], r["profile_id"], day, day] for r in rows])
        con.execute("INSERT INTO audit.seed_exports VALUES (?, ?, ?, 'test', now(), 'sent', ?, NULL, '{}')",
                    [agreement.partner_id, agreement.agreement_id, day, len(rows)])


def query(settings, sql: str, params=()) -> list[tuple]:
    with warehouse(settings, read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def matched(settings, partner_id: str, day: dt.date) -> dict[str, tuple[str, str | None]]:
    return {rid: (status, pid) for rid, status, pid in query(settings, """
        SELECT partner_record_id, match_status, profile_id FROM intermediate.int_partner_records_matched
        WHERE partner_id = ? AND drop_date = ?""", [partner_id, day])}


def quarantined(settings, partner_id: str, day: dt.date) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for rid, rules, source_file, source_row in query(settings, """SELECT partner_record_id, failed_rules, source_file, source_row
            FROM raw.quarantined_rows WHERE partner_id = ? AND drop_date = ? ORDER BY ALL""", [partner_id, day]):
        assert source_file == "records-000.csv.gz" and source_row >= 1  # file and row, for the partner's fix
        for rule in rules:
            found.setdefault(rule, []).append(rid)
    return found


def report(settings, partner_id: str, day: dt.date) -> dict:
    with warehouse(settings, read_only=True) as con:
        cur = con.execute("SELECT * FROM marts.match_report WHERE partner_id = ? AND drop_date = ?", [partner_id, day])
        return dict(zip([d[0] for d in cur.description], cur.fetchone()))


@pytest.fixture
def agreements(agreements_dir):
    """acme_bank allows partner-id-only rows; globex_retail does not."""
    path = agreements_dir / "acme_bank.yaml"
    path.write_text(path.read_text() + "\npartner_id_only_rows: true\n")
    return load_agreements(agreements_dir)


def test_seed_keyed_drops_match_refuse_foreign_seeds_and_forget_the_erased(
        pipeline_env, governance_dir, audience_api, agreements, s3_api, tmp_path):
    settings = load_settings()
    acme, globex = agreements["acme_bank"], agreements["globex_retail"]
    root = tmp_path / "tree"
    outbox = root / "outbox"
    write_profiles(root, settings.first_party_bucket, D1, not_sharing=set())
    acme_seeds = write_seed_set(root, "outbox", acme, D1, range(0, 200))
    globex_seeds = write_seed_set(root, "outbox", globex, D1, range(100, 250))
    issue(settings, acme, acme_seeds, D1)
    issue(settings, globex, globex_seeds, D1)
    assert {r["seed_id"] for r in acme_seeds}.isdisjoint(r["seed_id"] for r in globex_seeds)
    acme_set, globex_set = outbox / "acme_bank" / "seeds" / D1.isoformat(), outbox / "globex_retail" / "seeds" / D1.isoformat()
    assert len(SeedSet.read(acme_set).rows) == 200

    # night 1: each partner's answer, carrying three of the other's seeds and two made-up ones; globex also
    # sends a partner-id-only row, which its agreement does not allow
    truth_a1 = write_seeded_drop(root, settings.landing_bucket, SeededDropSpec(
        acme, D1, acme_set, foreign_seed_set=globex_set, foreign_rows=3), PROFILES_SEED, N_PROFILES, seed=1)
    truth_g1 = write_seeded_drop(root, settings.landing_bucket, SeededDropSpec(
        globex, D1, globex_set, foreign_seed_set=acme_set, foreign_rows=3, refresh={"GLOBEX-000000000001": None}),
        PROFILES_SEED, N_PROFILES, seed=2)
    synth.upload_tree(s3_api, root)
    run_night(D1, "n1")

    assert 100 < len(truth_a1["expected_profiles"]) < 200 and truth_a1["rows_by_kind"]["seed_and_hashes"] > 10
    assert matched(settings, "acme_bank", D1) == {rid: ("seed", pid) for rid, pid in truth_a1["expected_profiles"].items()}
    assert matched(settings, "globex_retail", D1) == {rid: ("seed", pid) for rid, pid in truth_g1["expected_profiles"].items()}
    # another agreement's seeds and made-up ones are quarantined as seed_id_unknown; globex's id-only row too
    assert quarantined(settings, "acme_bank", D1) == truth_a1["expected_invalid"]
    assert len(truth_a1["expected_invalid"]["seed_id_unknown"]) == 5
    assert quarantined(settings, "globex_retail", D1) == truth_g1["expected_invalid"]
    assert set(truth_g1["expected_invalid"]) == {"seed_id_unknown", "identifier_missing"}
    [reasons] = query(settings, """SELECT reasons FROM audit.drop_events WHERE partner_id = 'acme_bank' AND event = 'loaded'""")[0]
    [unknown] = [r for r in json.loads(reasons) if r.get("rule") == "seed_id_unknown"]
    assert unknown["rows"] == 5 and "acme-2026-01" in unknown["fix"]
    expected = len(truth_a1["expected_profiles"])
    r1 = report(settings, "acme_bank", D1)
    assert (r1["rows_received"], r1["rows_quarantined"], r1["rows_valid"]) == (expected + 5, 5, expected)
    assert (r1["matched_by_seed"], r1["matched"], r1["rows_with_seed"], r1["seed_match_rate"], r1["match_rate"]) == (
        expected, expected, expected, 1.0, 1.0)
    assert (r1["matched_by_email"], r1["matched_by_partner_id"], r1["seed_not_shareable"]) == (0, 0, 0)
    links = dict(query(settings, "SELECT partner_person_id, profile_id FROM marts.partner_person_links WHERE partner_id = 'acme_bank'"))
    assert links == truth_a1["linked_persons"]

    # night 2: one returned person withdrew partner sharing, another returned person is erased; acme
    # answers the same seed set again and refreshes one linked person and one it never sent by id alone
    person_of = {pid: person for person, pid in truth_a1["linked_persons"].items()}
    # the erased one is among the three acme seeds sent to globex, so a quarantined row there carries its seed
    erased = next(r["profile_id"] for r in acme_seeds[:3] if r["profile_id"] in person_of)
    withdrawn, refreshed = sorted(set(person_of) - {erased})[:2]
    erased_person, withdrawn_person, refreshed_person = person_of[erased], person_of[withdrawn], person_of[refreshed]
    write_profiles(root, settings.first_party_bucket, D2, not_sharing={withdrawn})
    requests = root / settings.first_party_bucket / "erasure_requests" / D2.isoformat()
    requests.mkdir(parents=True)
    (requests / "requests.csv").write_text(f"request_id,received_at,profile_id\nerase-1,{D2}T08:00:00Z,{erased}\n")
    erased_seed = seed_of(acme.agreement_id, erased)
    truth_a2 = write_seeded_drop(root, settings.landing_bucket, SeededDropSpec(
        acme, D2, acme_set, returned_share=1.0, foreign_rows=0, made_up_rows=0,
        refresh={refreshed_person: refreshed, "ACME-999999999999": None}), PROFILES_SEED, N_PROFILES, seed=3)
    synth.upload_tree(s3_api, root)
    run_night(D2, "n2")

    got = matched(settings, "acme_bank", D2)
    kinds = truth_a2["record_kinds"]
    refresh_rid, nobody_rid = sorted(rid for rid, kind in kinds.items() if kind == "partner_id_only")
    assert truth_a2["expected_profiles"][refresh_rid] == refreshed and truth_a2["expected_unmatched"] == [nobody_rid]
    expected_seed = {rid: ("seed_not_shareable", None) if pid == withdrawn else ("seed", pid)
                     for rid, pid in truth_a2["expected_profiles"].items() if kinds[rid] != "partner_id_only" and pid != erased}
    assert len(expected_seed) == len(truth_a2["expected_profiles"]) - 2  # the erased person's row is gone too
    assert got == {**expected_seed, refresh_rid: ("partner_id", refreshed), nobody_rid: ("unmatched", None)}
    # the withdrawn person's night-1 row matches nothing now either; a partner-id-only row makes no link
    assert matched(settings, "acme_bank", D1)[next(r for r, p in truth_a1["expected_profiles"].items() if p == withdrawn)] == (
        "seed_not_shareable", None)
    links2 = dict(query(settings, "SELECT partner_person_id, profile_id FROM marts.partner_person_links WHERE partner_id = 'acme_bank'"))
    assert "ACME-999999999999" not in links2 and erased_person not in links2 and withdrawn_person not in links2
    assert links2[refreshed_person] == refreshed
    r2 = report(settings, "acme_bank", D2)
    n_seed = len(expected_seed)
    assert (r2["rows_valid"], r2["matched_by_seed"], r2["seed_not_shareable"], r2["matched_by_partner_id"], r2["unmatched"]) == (
        n_seed + 2, n_seed - 1, 1, 1, 1)
    assert r2["rows_with_seed"] == n_seed and r2["seed_match_rate"] == round((n_seed - 1) / n_seed, 4)
    assert r2["matched"] == n_seed - 1 + 1

    # the erased person: every row of theirs (by seed, by their partner id, quarantined with their seed) is gone
    assert query(settings, "SELECT count(*) FROM raw.partner_records WHERE seed_id = ? OR partner_person_id = ?",
                 [erased_seed, erased_person]) == [(0,)]
    assert query(settings, "SELECT count(*) FROM raw.quarantined_rows WHERE record->>'seed_id' = ?", [erased_seed]) == [(0,)]
    deleted = dict(query(settings, """SELECT location, sum(rows) FROM audit.data_deletions WHERE request_id = 'erase-1'
                                      AND location LIKE 'raw.%' GROUP BY 1"""))
    assert deleted["raw.partner_records"] == 2  # its seed rows of both nights
    assert deleted["raw.quarantined_rows"] == 1  # globex's row carrying its acme seed
    assert deleted["raw.issued_seeds"] == 1
    rewrite_warehouse(settings)  # what the night does once activation has let go of the person
    for path in (settings.warehouse_path, settings.marts_path, settings.published_path):
        data = path.read_bytes()
        assert erased_seed.encode() not in data and erased_person.encode() not in data, path

    # the scorecard's seed reconciliation: acme's set of night 1 (200 sent) and the seeds that came back
    returned = (set(truth_a1["seeds_returned"]) | set(truth_a2["seeds_returned"])) - {erased_seed}
    rows = {day: (sent, back, rate) for day, sent, back, rate in query(settings, """
        SELECT drop_date, seeds_sent, seeds_returned, seed_return_rate FROM marts.partner_scorecard WHERE partner_id = 'acme_bank'""")}
    assert rows == {D1: (200, len(returned), round(len(returned) / 200, 4)), D2: (None, None, None)}


def test_partners_without_seeds_keep_their_rows_and_figures(built):
    """On the demo scenario (no seed sets, no seed ids): the scorecard has exactly match_report's
    (partner, drop) rows with no seed figures, and nothing is matched by seed or partner id."""
    import duckdb

    with duckdb.connect(str(built["marts"]), read_only=True) as con:
        keys = "SELECT partner_id, drop_date FROM {}"
        assert con.execute(f"({keys.format('partner_scorecard')}) EXCEPT ALL ({keys.format('match_report')})").fetchall() == []
        assert con.execute(f"({keys.format('match_report')}) EXCEPT ALL ({keys.format('partner_scorecard')})").fetchall() == []
        assert con.execute("""SELECT count(*), count(seeds_sent), count(seeds_returned), count(seed_return_rate)
                              FROM partner_scorecard""").fetchone() == (2, 0, 0, 0)
        assert con.execute("""SELECT sum(matched_by_seed), sum(matched_by_partner_id), sum(seed_not_shareable), sum(rows_with_seed),
                                     count(seed_match_rate), bool_and(matched = matched_by_email + matched_by_phone)
                              FROM match_report""").fetchone() == (0, 0, 0, 0, 0, True)
