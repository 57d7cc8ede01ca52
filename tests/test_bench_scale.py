"""`make bench-scale` at a tiny size: one night per profile count against the same partner rows, each
checked against its ground truth, and the curve written as JSON and as an SVG plot. (Its timings are
not judged here: speed is checked by running the bench, not by tests.)"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import pytest

from partner_pipeline_dev import bench

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
SVG = "{http://www.w3.org/2000/svg}"


def test_bench_scale_runs_a_night_per_profile_count_and_plots_them(tmp_path, capsys, own_environment, monkeypatch):
    """Three sizes, asked out of order; the middle one's dbt gets 16 MB (a real out-of-memory failure, as
    matching had at 50M profiles): it is a failed point of the curve, the size after it still runs, and
    the bench exits 1."""
    nights = []

    def night(day, catalog, work):
        nights.append(work)
        if len(nights) == 2:
            monkeypatch.setenv("PIPELINE_DUCKDB_MEMORY_LIMIT", "16MB")
        try:
            return real_night(day, catalog, work)
        finally:
            monkeypatch.delenv("PIPELINE_DUCKDB_MEMORY_LIMIT", raising=False)

    real_night = bench._night
    monkeypatch.setattr(bench, "_night", night)
    assert bench.main(["--rows", "2000", "--profiles", "3000", "1000", "2000", "--warehouse", "lake", "--results", str(tmp_path)]) == 1
    result = json.loads((tmp_path / "scale-lake-2000.json").read_text())
    assert result["matches_ground_truth"] is True
    assert [p["profiles"] for p in result["points"]] == [1000, 2000, 3000]  # in order, whatever order they were asked in
    small, failed, large = result["points"]
    assert "Out of Memory" in failed["failed"] and "pipeline" not in failed
    assert nights[1].exists() and not nights[0].exists()  # a failed night's work directory is kept, the others not
    shutil.rmtree(nights[1])
    for point in (small, large):
        assert point["mismatches"] == {} and min(point["segment_sizes"].values()) > 0
        assert point["pipeline"]["wall_seconds"] > 0 and point["pipeline"]["peak_tree_rss_mb"] > 100
        assert point["pipeline"]["stages"]["transform"] > 0
    assert [(s["from"], s["to"]) for s in result["steps"]] == [(1000, 3000)]
    targets = result["targets"]
    assert targets["every size completes"] == {"measured": {"failed": [2000]}, "met": False}
    assert targets["peak memory <= 4 GB at every size"]["met"] is False  # not met where a size did not complete
    svg = ET.fromstring((tmp_path / "scale-lake-2000.svg").read_text())
    lines = svg.findall(f"{SVG}polyline")
    assert len(lines) == 3 and all(len(line.get("points").split()) == 2 for line in lines)  # night, transform, memory
    assert len(svg.findall(f"{SVG}line")) == 1  # the 4 GB limit
    assert len(svg.findall(f"{SVG}path[@class='failed']")) == 2  # the failed size, marked in both panels
    out = capsys.readouterr().out
    assert "| 1,000 |" in out and "| 2,000 | FAILED |" in out and "| 3,000 |" in out
    assert not list(tmp_path.glob("night-*.json"))  # no floor, no later nights: not make bench's results


@pytest.mark.parametrize(("seconds", "met"), [((100.0,), None), ((100.0, 200.0, 300.0), True), ((100.0, 200.0, 400.0), False)])
def test_the_linear_check_judges_steps_only(seconds, met):
    """One size makes no step, so linearity is not judged (neither met nor missed); the steps are judged
    against the first step's seconds per million profiles."""
    points = [{"profiles": (i + 1) * 1_000_000, "matches_ground_truth": True,
               "pipeline": {"wall_seconds": s, "peak_tree_rss_mb": 1000}} for i, s in enumerate(seconds)]
    result = bench._scale_result("lake", 1_000_000, points)
    assert result["targets"]["linear: each step's seconds per million profiles <= 1.1 x the first step's"]["met"] is met
    assert result["targets"]["every size completes"]["met"] is True
