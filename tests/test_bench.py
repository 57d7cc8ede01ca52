"""`make bench` itself, at a tiny size: the night and the floor run, agree with the ground truth
and with each other, and the result file has every figure the README quotes. (Its timings are
not judged here: speed is checked by running `make bench`, not by tests.)"""

from __future__ import annotations

import json

import pytest

from partner_pipeline_dev import bench

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]  # two lake configurations, three nights each


def test_bench_runs_the_night_and_the_floor_and_checks_them(tmp_path, capsys, own_environment):
    """Both lake configurations, as `make bench` runs them: the embedded catalog, and a PostgreSQL one."""
    assert bench.main(["--rows", "3000", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for warehouse in ("lake", "lake-postgres"):
        result = json.loads((tmp_path / f"night-{warehouse}-3000.json").read_text())
        assert result["warehouse"] == warehouse and f"| {warehouse} | 3,000 |" in out
        check(result)


def check(result: dict) -> None:
    assert result["matches_ground_truth"] is True and result["mismatches"] == {}
    # two partners' drops (ambiguous pairs among their rows), so every shipped segment has members
    assert result["drops"] == {"acme_bank": 1500, "globex_retail": 1500} and result["ambiguous_share"] > 0
    assert set(result["segment_sizes"]) == {"attrition_risk", "high_earning_homeowners", "upsell_prospects"}
    assert min(result["segment_sizes"].values()) > 0
    assert set(result["pipeline"]["stages"]) == set(bench.TASKS)
    assert all(result["pipeline"]["stages"][t] > 0 for t in ("ingest", "transform", "activate"))
    assert result["floor"]["stages"] and result["floor"]["wall_seconds"] > 0
    limits = result["floor"]["machine_limits"]  # measured on the floor's own downloads
    assert limits["drop rows"] == 3000 and limits["drop files"] == 8
    assert limits["sha256 per second, one core"] > 0 and limits["gunzip MB/s (plain) one core"] > 0
    assert {"group the profiles' count of 64-hex keys, every core (s)", "join half as many 64-hex keys to them, every core (s)"} <= set(limits)
    assert result["pipeline"]["peak_tree_rss_mb"] > 100  # the tree: dbt's process is counted too
    by_stage = result["pipeline"]["peak_tree_rss_mb_by_stage"]
    assert by_stage["transform"]["children"] > 50  # dbt, a child of the task's process
    assert by_stage["ingest"]["children"] > 50  # the drops' ingests, in processes of their own as the DAG's tasks
    assert max(p["total"] for p in by_stage.values()) <= result["pipeline"]["peak_tree_rss_mb"]
    assert all(abs(p["total"] - p["process"] - p["children"]) <= 1 for p in by_stage.values())  # each rounded
    # the two later nights on the same lake: a new drop per partner and 1 % of the emails changed, then nothing new
    second, quiet = result["later_nights"]["second"], result["later_nights"]["no change"]
    assert second["date"] == "2026-11-22" and quiet["date"] == "2026-11-23"
    assert second["drops"] == {"acme_bank": 1500, "globex_retail": 1500} and 0 < second["profiles_changed"] < 3000 * 0.03
    assert second["stages"]["ingest"] > 0 and quiet["stages"]["ingest"] == 0
    assert all(night["stages"]["transform"] > 0 and night["peak_tree_rss_mb"] > 100 for night in (second, quiet))
    targets = result["targets"]
    assert {"second night <= 60 % of the first", "a night with no change <= 30 s"} <= set(targets)
    assert targets["DAG parse < 1 s per file"]["measured"]["partner_drops_nightly.py"] > 0
