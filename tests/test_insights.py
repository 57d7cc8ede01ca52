"""Partner insights: the overlap report shared with partners (suppression, differential privacy,
budget ledger) and the scorecard, on a real warehouse built by the nightly functions."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import re

import pytest

from partner_pipeline import insights, nightly
from partner_pipeline.agreements import load_agreements
from partner_pipeline.settings import load_settings
from partner_pipeline.warehouse import warehouse

pytestmark = pytest.mark.slow

DAY = dt.date(2026, 11, 21)


def query(sql, params=()):
    with warehouse(load_settings(), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def outbox_report(s3_api, settings, partner_id, day):
    agreement = load_agreements(settings.agreements_dir)[partner_id]
    bucket, _, prefix = agreement.outbox(settings.outbox_bucket).removeprefix("s3://").partition("/")
    body = s3_api.get_object(Bucket=bucket, Key=f"{prefix}overlap/{day}.csv")["Body"].read().decode()
    terms = json.loads(s3_api.get_object(Bucket=bucket, Key=f"{prefix}overlap/{day}.json")["Body"].read())
    return list(csv.DictReader(io.StringIO(body))), terms


def test_shared_reports_hold_only_groups_of_at_least_k(warehouse_copy, s3_api):
    result = nightly.share_overlap_reports(DAY, "night-1")
    assert set(result["shared"]) == {"acme_bank", "globex_retail"} and result["refused"] == {}
    agreements = load_agreements(warehouse_copy.agreements_dir)
    exact = {(p, tuple(v)): n for p, v, n in query("SELECT partner_id, dimension_values, profiles FROM marts.partner_overlap_counts")}
    for partner_id, agreement in agreements.items():
        rows, terms = outbox_report(s3_api, warehouse_copy, partner_id, DAY)
        k = agreement.min_group_size
        assert list(rows[0]) == [*agreement.overlap_dimensions, "profiles"]  # aggregates only: no id, no hash
        assert rows and all(int(r["profiles"]) >= k for r in rows)
        assert terms["groups_shown"] == len(rows) and terms["groups_withheld"] > 0
        if agreement.differential_privacy is None:  # exact counts, the same groups as the mart
            mart = {tuple(v): n for v, n in query("""SELECT dimension_values, profiles FROM marts.partner_overlap
                                                     WHERE partner_id = ? AND row_type = 'group'""", [partner_id])}
            assert {tuple(r[d] for d in agreement.overlap_dimensions): int(r["profiles"]) for r in rows} == mart
        else:  # noised: counts differ from the exact ones somewhere, and the release spent its epsilon
            shown = {tuple(r[d] for d in agreement.overlap_dimensions): int(r["profiles"]) for r in rows}
            assert any(exact[(partner_id, key)] != n for key, n in shown.items())
            assert terms["noise"]["epsilon"] == agreement.differential_privacy.epsilon_per_release
            assert query("SELECT status, epsilon FROM audit.privacy_budget_ledger WHERE partner_id = ?", [partner_id]) == [
                ("spent", agreement.differential_privacy.epsilon_per_release)]
    # the mart itself holds no group below k either (and says how many it withheld)
    assert query("""SELECT count(*) FROM marts.partner_overlap o JOIN staging.stg_pipeline__agreements a USING (partner_id)
                    WHERE o.row_type = 'group' AND o.profiles < a.min_group_size""") == [(0,)]
    withheld = dict(query("SELECT partner_id, groups_suppressed FROM marts.partner_overlap WHERE row_type = 'suppressed'"))
    assert withheld["globex_retail"] == sum(1 for (p, _), n in exact.items() if p == "globex_retail" and 0 < n < 100)


def test_a_rerun_resends_the_same_release_and_spends_nothing(warehouse_copy, s3_api):
    nightly.share_overlap_reports(DAY, "night-1")
    first, _ = outbox_report(s3_api, warehouse_copy, "acme_bank", DAY)
    nightly.share_overlap_reports(DAY, "night-1-retry")
    again, _ = outbox_report(s3_api, warehouse_copy, "acme_bank", DAY)
    assert again == first  # fresh noise on a re-run would let an average undo it
    assert query("SELECT count(*) FROM audit.privacy_budget_ledger WHERE partner_id = 'acme_bank'") == [(1,)]


def test_the_budget_ledger_refuses_a_release_once_spent(warehouse_copy, agreements_dir, s3_api):
    path = agreements_dir / "acme_bank.yaml"
    path.write_text(re.sub(r"budget_per_period: [\d.]+", "budget_per_period: 2.0", path.read_text()))
    for day in (DAY, DAY + dt.timedelta(days=1)):
        assert "acme_bank" in nightly.share_overlap_reports(day, f"night-{day}")["shared"]
    third = DAY + dt.timedelta(days=2)
    result = nightly.share_overlap_reports(third, "night-3")
    assert "acme_bank" not in result["shared"] and "globex_retail" in result["shared"]  # others still get theirs
    assert ("needs epsilon 1.0 but 2 of the 2 budgeted for 2026-11 is spent; nothing was released"
            in result["refused"]["acme_bank"])
    with pytest.raises(Exception, match="NoSuchKey"):
        outbox_report(s3_api, warehouse_copy, "acme_bank", third)
    assert query("SELECT status, count(*) FROM audit.privacy_budget_ledger WHERE partner_id = 'acme_bank' GROUP BY 1 ORDER BY 1") == [
        ("refused", 1), ("spent", 2)]
    # a new month, a new budget
    assert "acme_bank" in nightly.share_overlap_reports(dt.date(2026, 12, 1), "night-dec")["shared"]


def test_a_difference_attack_across_two_releases_does_not_reveal_the_added_person():
    """Two releases of a group count, without and with one more person. The best an attacker can do
    is guess 'added' when the second count is higher; with epsilon-DP noise the guess is right at
    most e^eps / (1 + e^eps) of the time (73% for eps = 1), against 100% without noise."""
    epsilon, n, trials = 1.0, 57, 4000
    without = insights.noised_counts([n] * trials, epsilon)
    with_person = insights.noised_counts([n + 1] * trials, epsilon)
    # threshold attack at every cut, both ways round: the attacker's best accuracy
    best = max((sum(w > cut for w in with_person) + sum(o <= cut for o in without)) / (2 * trials)
               for cut in range(n - 10, n + 11))
    assert best <= math.exp(epsilon) / (1 + math.exp(epsilon)) + 0.03
    assert len(set(without)) > 3  # it is noise, not a constant offset
    assert sorted([n, n + 1])[1] - n == 1  # without noise the two releases differ by exactly the person


def test_scorecard_and_incremental_reach(warehouse_copy, built):
    truth = built["truth"]
    card = {r[0]: r[1:] for r in query("""SELECT partner_id, rows_received, quarantine_rate, match_rate, attribute_fill_rate,
                                                 new_information_share, delivery_lag_hours, age_days
                                          FROM marts.partner_scorecard WHERE drop_date = ?""", [DAY])}
    assert set(card) == {"acme_bank", "globex_retail"}
    for partner_id, (received, quarantine_rate, match_rate, fill, new_share, lag, age) in card.items():
        drop = truth["drops"][f"{partner_id}/{DAY}"]
        assert received == drop["rows_total"]
        assert quarantine_rate == round(drop["rows_invalid"] / drop["rows_total"], 4)
        assert 0 < match_rate < 1 and 0 < fill <= 1 and age == 0 and lag is not None
        assert new_share == 1.0  # a first drop: everything it says about a matched profile is new
    reach = {(s, p): (m, t) for s, p, m, t in query(
        "SELECT segment_name, partner_id, members, members_through_partner FROM marts.partner_segment_reach")}
    assert reach[("upsell_prospects", "globex_retail")] == (truth["segments"]["upsell_prospects"],) * 2
    assert ("upsell_prospects", "acme_bank") not in reach  # its rule reads no Acme attribute
