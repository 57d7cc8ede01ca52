"""The overlap report each partner may receive, written to its outbox.

Only aggregates leave: the groups of the mart `partner_overlap` (every group below the agreement's
min_group_size absent: the threshold on exact counts is defined there, once). Where the agreement asks for differential privacy, each group count of
the full domain (the mart partner_overlap_counts, zero counts included) gets discrete Laplace noise
from OpenDP, calibrated to epsilon_per_release for one person joining or leaving (L1 sensitivity
1: a person is in exactly one group), and only noised counts of at least min_group_size are
shared (the same threshold, on counts the warehouse never holds). Each release spends its epsilon from the partner's budget for the period
(audit.privacy_budget_ledger); once spent, the release is refused. A re-run of a date re-sends
the release already made, never fresh noise (which would let averaging undo it).
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import json
import logging

from partner_pipeline.agreements import Agreement
from partner_pipeline.storage import ensure_buckets

log = logging.getLogger(__name__)


class BudgetSpent(RuntimeError):
    """The release would spend more privacy budget than the agreement allows in its period."""


@functools.lru_cache(maxsize=8)
def _laplace(epsilon: float):
    import opendp.prelude as dp

    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int)
    # the smallest noise whose privacy loss for a change of 1 (one person) is at most epsilon
    return dp.binary_search_chain(lambda scale: dp.m.make_laplace(*space, scale=scale), d_in=1, d_out=epsilon)


def noised_counts(counts: list[int], epsilon: float) -> list[int]:
    """Every count plus discrete Laplace noise, epsilon-DP for one person joining or leaving one group."""
    return _laplace(epsilon)(list(counts))


def _spent(con, partner_id: str, period: str) -> float:
    return con.execute("""SELECT coalesce(sum(epsilon), 0) FROM audit.privacy_budget_ledger
                          WHERE partner_id = ? AND period = ? AND status = 'spent'""", [partner_id, period]).fetchone()[0]


def release(con, agreement: Agreement, day: dt.date, run_id: str) -> dict:
    """The rows of the partner's overlap report for `day` (made once; a re-run returns the same rows)."""
    made = con.execute("SELECT release FROM audit.overlap_releases WHERE partner_id = ? AND release_date = ?",
                       [agreement.partner_id, day]).fetchone()
    if made:
        return json.loads(made[0])
    k, dp_terms = agreement.min_group_size, agreement.differential_privacy
    domain = con.execute("""SELECT dimension_names, dimension_values, profiles FROM marts.partner_overlap_counts
                            WHERE partner_id = ? ORDER BY dimension_values""", [agreement.partner_id]).fetchall()
    if dp_terms is None:  # exact counts: the groups partner_overlap shows (the threshold is its own, in SQL)
        shown = con.execute("""SELECT dimension_values, profiles FROM marts.partner_overlap
                               WHERE partner_id = ? AND row_type = 'group' ORDER BY dimension_values""",
                            [agreement.partner_id]).fetchall()
        noise = None
    else:
        period = dp_terms.period_of(day)
        spent = _spent(con, agreement.partner_id, period)
        if spent + dp_terms.epsilon_per_release > dp_terms.budget_per_period + 1e-9:
            con.execute("INSERT INTO audit.privacy_budget_ledger VALUES (?, ?, ?, ?, ?, now(), 'refused')",
                        [agreement.partner_id, period, day, run_id, dp_terms.epsilon_per_release])
            raise BudgetSpent(
                f"{agreement.partner_id}: the overlap release of {day} needs epsilon {dp_terms.epsilon_per_release} but "
                f"{spent:g} of the {dp_terms.budget_per_period:g} budgeted for {period} is spent; nothing was released. "
                f"Wait for the next {dp_terms.period}, or amend differential_privacy in the agreement with the partner.")
        noisy = noised_counts([count for _, _, count in domain], dp_terms.epsilon_per_release)
        shown = [(values, n) for (_, values, _), n in zip(domain, noisy) if n >= k]
        noise = {"mechanism": "discrete Laplace (OpenDP)", "epsilon": dp_terms.epsilon_per_release, "period": period,
                 "budget_per_period": dp_terms.budget_per_period, "spent_in_period": spent + dp_terms.epsilon_per_release}
        con.execute("INSERT INTO audit.privacy_budget_ledger VALUES (?, ?, ?, ?, ?, now(), 'spent')",
                    [agreement.partner_id, period, day, run_id, dp_terms.epsilon_per_release])
    document = {"partner_id": agreement.partner_id, "release_date": day.isoformat(),
                "dimensions": list(agreement.overlap_dimensions), "min_group_size": k,
                "groups_shown": len(shown), "groups_withheld": len(domain) - len(shown), "noise": noise,
                "rows": [{"values": list(values), "profiles": int(count)} for values, count in shown]}
    con.execute("INSERT INTO audit.overlap_releases VALUES (?, ?, ?, now(), ?)",
                [agreement.partner_id, day, run_id, json.dumps(document)])
    return document


def share_overlap_reports(con, client, agreements: dict[str, Agreement], outbox_bucket: str, day: dt.date,
                          run_id: str) -> dict:
    """Write each partner's overlap report to `<outbox>/overlap/<date>.csv` (+ `.json` with the terms).
    A refused release (budget spent) is reported, not raised: the other partners still get theirs."""
    shared, refused = {}, {}
    for partner_id, agreement in sorted(agreements.items()):
        if not agreement.is_valid_on(day):
            continue
        try:
            document = release(con, agreement, day, run_id)
        except BudgetSpent as exc:
            refused[partner_id] = str(exc)
            log.warning("%s", exc)
            continue
        bucket, _, prefix = agreement.outbox(outbox_bucket).removeprefix("s3://").partition("/")
        ensure_buckets(client, [bucket])
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*document["dimensions"], "profiles"])
        writer.writerows([*row["values"], row["profiles"]] for row in document["rows"])
        client.put_object(Bucket=bucket, Key=f"{prefix}overlap/{day}.csv", Body=out.getvalue().encode())
        terms = {k: v for k, v in document.items() if k != "rows"}
        client.put_object(Bucket=bucket, Key=f"{prefix}overlap/{day}.json", Body=json.dumps(terms, indent=2).encode())
        shared[partner_id] = {"groups_shown": document["groups_shown"], "noised": document["noise"] is not None,
                              "location": f"s3://{bucket}/{prefix}overlap/{day}.csv"}
    return {"shared": shared, "refused": refused}

