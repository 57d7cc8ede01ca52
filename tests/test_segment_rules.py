"""A segment can only read what its policy check names: segments are declared in YAML alone, each
rule runs over only the columns the check derives from it, and a rule that reaches the row or a
function outside the allowed list is refused, at build time and at send time."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil

import duckdb
import pytest
import yaml

from partner_pipeline import activation, nightly, transform
from partner_pipeline.agreements import load_agreements
from partner_pipeline.settings import load_settings
from partner_pipeline.transform import ModelBuildFailed
from partner_pipeline.warehouse import warehouse
from partner_pipeline_dev import synth

pytestmark = pytest.mark.slow

DAY = dt.date(2026, 11, 21)
# household_income may not go to email (crm_email): each rule reads it without naming its column
FORMS = {
    "indexed": ("enriched_profiles['acme_bank__household_income'] >= 150000",
                "the rule refers to the row enriched_profiles as a value"),
    "extracted": ("struct_extract(enriched_profiles, 'acme_bank' || '__household_income') >= 150000",
                  "the rule calls struct_extract, a function outside the allowed list"),
    "as_json": ("(to_json(enriched_profiles) ->> 'acme_bank__household_income')::bigint >= 150000",
                "the rule calls to_json, a function outside the allowed list"),
    "by_macro": ("acme_income(enriched_profiles) >= 150000",
                 "the rule calls acme_income, a function outside the allowed list"),
}
# a user macro in the database the build opens, given the row: the parser sees a call, not what it reads
MACRO = "CREATE OR REPLACE MACRO acme_income(r) AS struct_extract(r, 'acme_bank__household_income')"


def project_with_segments(tmp_path, monkeypatch, segments: dict[str, str]):
    """A copy of the dbt project whose _segments.yml also declares `segments` ({name: rule}, to crm_email)."""
    project = tmp_path / "dbt_project"
    shutil.copytree(transform.DBT_PROJECT, project, ignore=shutil.ignore_patterns("target", "logs", ".user.yml"))
    path = project / "models" / "marts" / "_segments.yml"
    document = yaml.safe_load(path.read_text())
    model = next(m for m in document["models"] if m["name"] == "segment_membership")
    model["config"]["meta"]["segments"] += [{"name": name, "description": "probe", "rule": rule, "destinations": ["crm_email"]}
                                            for name, rule in segments.items()]
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    monkeypatch.setattr(transform, "DBT_PROJECT", project)
    return project


def test_rules_reading_a_partner_attribute_without_naming_it_fail_the_build_and_nothing_is_sent(
        pipeline_env, s3_api, tmp_path, monkeypatch, governance_dir, audience_api):
    settings = load_settings()
    project_with_segments(tmp_path, monkeypatch, {name: rule for name, (rule, _) in FORMS.items()})
    synth.generate_scenario(tmp_path / "synth", landing_bucket=settings.landing_bucket, first_party_bucket=settings.first_party_bucket,
                            agreements=load_agreements(settings.agreements_dir), drop_date=DAY, n_profiles=300,
                            rows_per_partner=200, seed=2)
    synth.upload_tree(s3_api, tmp_path / "synth")
    nightly.publish([nightly.ingest(d, "r") for d in nightly.discover(DAY, "r")], DAY, "r")
    nightly.load_first_party(DAY)
    with warehouse(settings) as con:  # the build's own connection finds it by its bare name
        con.execute(MACRO)
    with pytest.raises(ModelBuildFailed) as failure:
        nightly.transform(DAY, "r")
    message = str(failure.value)
    for name, (_, form) in FORMS.items():
        assert f"segment {name}: {form}" in message
    assert "high_earning_homeowners" not in message  # the shipped segments are not refused
    with warehouse(settings, read_only=True) as con:  # a failed build replaces no marts
        assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_catalog = 'marts'").fetchone()[0] == 0
        refused = {s for (s,) in con.execute(
            "SELECT DISTINCT segment_name FROM intermediate.int_segment_reads WHERE rule_problem IS NOT NULL").fetchall()}
    assert refused == set(FORMS)
    with contextlib.suppress(activation.ActivationFailed, duckdb.Error):  # no marts: activation cannot run
        nightly.activate(DAY, "r")
    assert audience_api.requests == []
    assert s3_api.list_objects_v2(Bucket=settings.activation_bucket).get("KeyCount", 0) == 0


def test_a_rule_naming_a_column_enriched_profiles_lacks_fails_the_build_naming_it(pipeline_env, s3_api, tmp_path, monkeypatch):
    settings = load_settings()
    project_with_segments(tmp_path, monkeypatch, {"as_of_today": "customer_since < current_date"})
    synth.generate_scenario(tmp_path / "synth", landing_bucket=settings.landing_bucket, first_party_bucket=settings.first_party_bucket,
                            agreements=load_agreements(settings.agreements_dir), drop_date=DAY, n_profiles=100,
                            rows_per_partner=50, seed=2)
    synth.upload_tree(s3_api, tmp_path / "synth")
    nightly.publish([nightly.ingest(d, "r") for d in nightly.discover(DAY, "r")], DAY, "r")
    nightly.load_first_party(DAY)
    with pytest.raises(ModelBuildFailed, match="segment as_of_today reads current_date, which enriched_profiles does not have"):
        nightly.transform(DAY, "r")


def compiled_inputs(sql: str) -> dict[str, set[str]]:
    """{segment: columns of its segment_input relation} from segment_membership's compiled SQL, by DuckDB's parser."""
    tree = duckdb.sql("SELECT json_serialize_sql(?)", params=[sql]).fetchone()[0]
    inputs: dict[str, set[str]] = {}

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "SELECT_NODE" and (node.get("from_table") or {}).get("alias") == "segment_input":
                name = node["select_list"][0]["value"]["value"]
                inner = node["from_table"]["subquery"]["node"]
                inputs[name] = {c["column_names"][-1] for c in inner["select_list"]}
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(tree))
    return inputs


def test_each_rule_runs_over_only_the_columns_the_policy_check_names(built, warehouse_copy):
    sql = (built["dbt_target"] / "compiled" / "partner_pipeline" / "models" / "marts"
           / "segment_membership.sql").read_text()
    inputs = compiled_inputs(sql)
    prospects = compiled_inputs((built["dbt_target"] / "compiled" / "partner_pipeline" / "models" / "marts"
                                 / "prospect_segment_membership.sql").read_text())
    assert set(prospects) == set(synth.load_segments(kind="prospect"))
    inputs |= prospects
    with warehouse(warehouse_copy, read_only=True) as con:
        checked = {}
        for segment, column in con.execute("""SELECT segment_name, column_name FROM intermediate.int_segment_reads
                                              WHERE column_name IS NOT NULL""").fetchall():
            # a customer rule runs over profile_id and its columns; a prospect rule over the prospect's key and its columns
            checked.setdefault(segment, {"partner_id", "partner_person_id"} if segment in prospects else {"profile_id"}).add(column)
        partners = set(con.execute("""SELECT DISTINCT segment_name, partner_id FROM intermediate.int_segment_reads
                                      WHERE partner_id IS NOT NULL""").fetchall())
        assert set(inputs) == set(synth.load_segments()) | set(prospects) and inputs == checked
        # what the consent requirement follows: the partners of those same columns
        assert partners == {(s, c.split("__")[0]) for s, columns in inputs.items() for c in columns if "__" in c}
        # a prospect rule reads only its partner's prospects: the relation it runs over is filtered to them
        assert "where partner_id = 'globex_retail'" in " ".join(
            (built["dbt_target"] / "compiled" / "partner_pipeline" / "models" / "marts"
             / "prospect_segment_membership.sql").read_text().split()).lower()
        # reading anything else over that relation does not bind: upsell_prospects cannot see Acme's income
        tampered = sql.replace("where (tier = 'standard'", "where (acme_bank__household_income > 0 and tier = 'standard'", 1)
        assert tampered != sql
        with pytest.raises(duckdb.BinderException, match="acme_bank__household_income"):
            con.execute(tampered)


def test_shipped_segments_and_audiences_equal_the_ground_truth(built, warehouse_copy):
    truth = built["truth"]
    with warehouse(warehouse_copy, read_only=True) as con:
        sizes = dict(con.execute("SELECT segment_name, count(*) FROM marts.segment_membership GROUP BY 1").fetchall())
        audiences = con.execute("""SELECT destination_id, segment_name, count(DISTINCT profile_id) FROM marts.activation_audiences
                                   WHERE profile_id IS NOT NULL
                                   GROUP BY 1, 2 ORDER BY 1, 2""").fetchall()
    assert sizes == truth["segments"] and all(sizes.values())
    assert audiences == sorted((d, s, truth["sendable"][s]) for s, segment in synth.load_segments().items()
                               for d in segment["destinations"])


def test_send_time_recheck_refuses_a_rule_that_reads_the_row(warehouse_copy, audience_api, s3_api):
    # the rule the send-time check reads changes after the build (as if the declaration had been
    # tampered with): the same derivation refuses it, and that pair is blocked at every destination
    with warehouse(warehouse_copy) as con:
        con.execute("""UPDATE intermediate.int_segments SET rule = ?
                       WHERE segment_name = 'upsell_prospects'""", [FORMS["as_json"][0]])
    with pytest.raises(activation.ActivationFailed) as failure:
        nightly.activate(DAY, "night-1")
    message = str(failure.value)
    for destination in ("crm_email", "personalization_api"):
        assert f"upsell_prospects -> {destination}: blocked, nothing sent" in message
    assert "segment upsell_prospects: the rule calls to_json, a function outside the allowed list" in message
    assert audience_api.members("upsell_prospects") == set()
    assert s3_api.list_objects_v2(Bucket=warehouse_copy.activation_bucket, Prefix="crm_email/").get("KeyCount", 0) == 0
    assert audience_api.members("high_earning_homeowners")  # the other segments went
