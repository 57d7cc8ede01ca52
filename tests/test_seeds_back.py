"""Seeds and partner ids in drops (spec v2 "Seeds in drops", "Partner ids"), three nights end to end on
the pipeline's own seed export.

Night 0: the export sends acme_bank (csv.gz) and globex_retail (parquet) their seed sets. The partners'
answers come from synth.seeded, from the seed sets as the partners received them (the outbox objects),
whose ground truth maps seeds to people through the seed files' hashes, never through the key.
Night 1: acme_bank (partner-id-only rows allowed) and globex_retail (not allowed) send seed-keyed
drops carrying each other's seeds and made-up ones. Night 2: one person withdrew
consent_partner_sharing, another is erased by profile id, and acme refreshes a linked person and an
unknown one by partner id alone.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import pytest

from conftest import run_night
from partner_pipeline.agreements import load_agreements
from partner_pipeline.settings import load_settings
from partner_pipeline.warehouse import rewrite_warehouse, warehouse
from partner_pipeline_dev import synth
from partner_pipeline_dev.synth.seeded import SeededDropSpec, SeedSet, write_seeded_drop
from test_physical_erasure import warehouse_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

D0, D1, D2 = dt.date(2026, 11, 19), dt.date(2026, 11, 20), dt.date(2026, 11, 21)
PROFILES_SEED, N_PROFILES = 7, 300
GLOBEX_KEY = "test-seed-key-globex-retail-0123456789abcdef"


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


def received_seed_set(s3_api, settings, partner_id: str, day: dt.date, into: Path) -> Path:
    """The seed set as the partner receives it: the objects of the folder the export's audit row names, copied."""
    [(location,)] = query(settings, """SELECT location FROM audit.seed_exports
                                       WHERE partner_id = ? AND seed_date = ? AND status = 'sent'""", [partner_id, day])
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    folder = into / partner_id / day.isoformat()
    folder.mkdir(parents=True)
    for obj in s3_api.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
        (folder / obj["Key"].rsplit("/", 1)[-1]).write_bytes(s3_api.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
    return folder


def query(settings, sql: str, params=()) -> list[tuple]:
    with warehouse(settings, read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def matched(settings, partner_id: str, day: dt.date) -> dict[str, tuple[str, str | None]]:
    return {rid: (status, pid) for rid, status, pid in query(settings, """
        SELECT partner_record_id, match_status, profile_id FROM intermediate.int_partner_records_matched
        WHERE partner_id = ? AND drop_date = ?""", [partner_id, day])}


def quarantined(settings, partner_id: str, day: dt.date, file: str = "records-000.csv.gz") -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for rid, rules, source_file, source_row in query(settings, """SELECT partner_record_id, failed_rules, source_file, source_row
            FROM raw.quarantined_rows WHERE partner_id = ? AND drop_date = ? ORDER BY ALL""", [partner_id, day]):
        assert source_file == file and source_row >= 1  # file and row, for the partner's fix
        for rule in rules:
            found.setdefault(rule, []).append(rid)
    return found


def report(settings, partner_id: str, day: dt.date) -> dict:
    with warehouse(settings, read_only=True) as con:
        cur = con.execute("SELECT * FROM marts.match_report WHERE partner_id = ? AND drop_date = ?", [partner_id, day])
        return dict(zip([d[0] for d in cur.description], cur.fetchone()))


@pytest.fixture
def agreements(agreements_dir, monkeypatch):
    """acme_bank (its shipped seed set, csv.gz) allows partner-id-only rows; globex_retail gets a parquet
    seed set of its own key and does not allow them."""
    acme = agreements_dir / "acme_bank.yaml"
    acme.write_text(acme.read_text() + "\npartner_id_only_rows: true\n")
    globex = agreements_dir / "globex_retail.yaml"
    globex.write_text(globex.read_text() + "\nseed_set:\n  format: parquet\n  secret_variable: seed_secret_globex\n")
    monkeypatch.setenv("AIRFLOW_VAR_SEED_SECRET_GLOBEX", GLOBEX_KEY)
    return load_agreements(agreements_dir)


def test_seed_keyed_drops_match_refuse_foreign_seeds_and_forget_the_erased(
        pipeline_env, governance_dir, audience_api, agreements, s3_api, tmp_path):
    settings = load_settings()
    acme, globex = agreements["acme_bank"], agreements["globex_retail"]
    root, received = tmp_path / "tree", tmp_path / "received"
    write_profiles(root, settings.first_party_bucket, D0, not_sharing=set())
    synth.upload_tree(s3_api, root)
    run_night(D0, "n0")  # no drop yet: the export sends each partner its seed set
    acme_set = received_seed_set(s3_api, settings, "acme_bank", D0, received)
    globex_set = received_seed_set(s3_api, settings, "globex_retail", D0, received)
    acme_seeds, globex_seeds = SeedSet.read(acme_set).rows, SeedSet.read(globex_set).rows
    assert len(acme_seeds) > 250 and {r["seed_id"] for r in acme_seeds}.isdisjoint(r["seed_id"] for r in globex_seeds)
    profile_of_seed = dict(query(settings, "SELECT seed_id, profile_id FROM raw.issued_seeds WHERE partner_id = 'acme_bank'"))

    # night 1: each partner's answer, carrying three of the other's seeds and two made-up ones; globex also
    # sends a partner-id-only row, which its agreement does not allow
    truth_a1 = write_seeded_drop(root, settings.landing_bucket, SeededDropSpec(
        acme, D1, acme_set, foreign_seed_set=globex_set, foreign_rows=3), PROFILES_SEED, N_PROFILES, seed=1)
    truth_g1 = write_seeded_drop(root, settings.landing_bucket, SeededDropSpec(
        globex, D1, globex_set, foreign_seed_set=acme_set, foreign_rows=3, refresh={"GLOBEX-000000000001": None},
        file_format="parquet"), PROFILES_SEED, N_PROFILES, seed=2)
    synth.upload_tree(s3_api, root)
    run_night(D1, "n1")

    assert len(truth_a1["expected_profiles"]) > 150 and truth_a1["rows_by_kind"]["seed_and_hashes"] > 30
    # the seeds resolve to the profiles they were issued for (the generator found them by the seed file's hashes)
    assert all(profile_of_seed[seed] in truth_a1["expected_profiles"].values() for seed in truth_a1["seeds_returned"])
    assert matched(settings, "acme_bank", D1) == {rid: ("seed", pid) for rid, pid in truth_a1["expected_profiles"].items()}
    assert matched(settings, "globex_retail", D1) == {rid: ("seed", pid) for rid, pid in truth_g1["expected_profiles"].items()}
    # another agreement's seeds and made-up ones are quarantined as seed_id_unknown; globex's id-only row too
    assert quarantined(settings, "acme_bank", D1) == truth_a1["expected_invalid"]
    assert len(truth_a1["expected_invalid"]["seed_id_unknown"]) == 5
    assert quarantined(settings, "globex_retail", D1, "records-000.parquet") == truth_g1["expected_invalid"]
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
    erased_seed = next(r["seed_id"] for r in acme_seeds[:3] if profile_of_seed[r["seed_id"]] in person_of)
    erased = profile_of_seed[erased_seed]
    withdrawn, refreshed = sorted(set(person_of) - {erased})[:2]
    erased_person, withdrawn_person, refreshed_person = person_of[erased], person_of[withdrawn], person_of[refreshed]
    write_profiles(root, settings.first_party_bucket, D2, not_sharing={withdrawn})
    requests = root / settings.first_party_bucket / "erasure_requests" / D2.isoformat()
    requests.mkdir(parents=True)
    (requests / "requests.csv").write_text(f"request_id,received_at,profile_id\nerase-1,{D2}T08:00:00Z,{erased}\n")
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

    # the erased person: out of tonight's seed sets; every row of theirs (by seed, by their partner id,
    # quarantined with their seed) and every seed issued for them is gone
    tonight = SeedSet.read(received_seed_set(s3_api, settings, "acme_bank", D2, received)).rows
    assert erased_seed not in {r["seed_id"] for r in tonight} and len(tonight) == len(acme_seeds) - 2  # erased, withdrawn
    assert query(settings, "SELECT count(*) FROM raw.issued_seeds WHERE profile_id = ?", [erased]) == [(0,)]
    assert query(settings, "SELECT count(*) FROM raw.partner_records WHERE seed_id = ? OR partner_person_id = ?",
                 [erased_seed, erased_person]) == [(0,)]
    assert query(settings, "SELECT count(*) FROM raw.quarantined_rows WHERE record->>'seed_id' = ?", [erased_seed]) == [(0,)]
    deleted = dict(query(settings, """SELECT location, sum(rows) FROM audit.data_deletions WHERE request_id = 'erase-1'
                                      AND location LIKE 'raw.%' GROUP BY 1"""))
    assert deleted["raw.partner_records"] == 2  # its seed rows of both nights
    assert deleted["raw.quarantined_rows"] == 1  # globex's row carrying its acme seed
    assert deleted["raw.issued_seeds"] == 2  # its seed under each agreement
    rewrite_warehouse(settings)  # what the night does once activation has let go of the person
    stores = warehouse_bytes(settings, s3_api)  # every warehouse file; on the lake its catalog and every object
    assert any(tonight[0]["seed_id"].encode() in data for data in stores.values())  # the search reads the stored rows
    assert [where for where, data in stores.items() if erased_seed.encode() in data or erased_person.encode() in data] == []

    # the scorecard's seed reconciliation per seed date: the set sent that night, and its seeds that came
    # back in a drop dated on or after it (the erased one's forgotten; the withdrawn one left the set on D2)
    withdrawn_seed = next(s for s, p in profile_of_seed.items() if p == withdrawn)
    returned = (set(truth_a1["seeds_returned"]) | set(truth_a2["seeds_returned"])) - {erased_seed}
    returned_d2 = set(truth_a2["seeds_returned"]) - {erased_seed, withdrawn_seed}
    sent = {D0: len(acme_seeds), D1: len(acme_seeds), D2: len(acme_seeds) - 2}
    want = {D0: len(returned), D1: len(returned), D2: len(returned_d2)}
    rows = {day: (n, back, rate) for day, n, back, rate in query(settings, """
        SELECT drop_date, seeds_sent, seeds_returned, seed_return_rate FROM marts.partner_scorecard WHERE partner_id = 'acme_bank'""")}
    # tonight's set is exported after tonight's build (it reads the built marts): the next build counts it
    assert rows == {**{day: (sent[day], want[day], round(want[day] / sent[day], 4)) for day in (D0, D1)}, D2: (None, None, None)}
    assert query(settings, "SELECT seeds_sent FROM audit.seed_exports WHERE partner_id = 'acme_bank' AND seed_date = ?",
                 [D2]) == [(sent[D2],)] and want[D2] == sent[D2]  # all of it came back on D2 (returned_share=1.0)


def test_partners_without_seeds_keep_their_rows_and_figures(built):
    """On the demo scenario (no seed sets, no seed ids): the scorecard has exactly match_report's
    (partner, drop) rows with no seed figures, and nothing is matched by seed or partner id."""
    with warehouse(built["settings"], read_only=True) as con:
        con.execute("USE marts")
        keys = "SELECT partner_id, drop_date FROM {}"
        assert con.execute(f"({keys.format('partner_scorecard')}) EXCEPT ALL ({keys.format('match_report')})").fetchall() == []
        assert con.execute(f"({keys.format('match_report')}) EXCEPT ALL ({keys.format('partner_scorecard')})").fetchall() == []
        assert con.execute("""SELECT count(*), count(seeds_sent), count(seeds_returned), count(seed_return_rate)
                              FROM partner_scorecard""").fetchone() == (2, 0, 0, 0)
        assert con.execute("""SELECT sum(matched_by_seed), sum(matched_by_partner_id), sum(seed_not_shareable), sum(rows_with_seed),
                                     count(seed_match_rate), bool_and(matched = matched_by_email + matched_by_phone)
                              FROM match_report""").fetchone() == (0, 0, 0, 0, 0, True)
