from partner_pipeline.agreements import load_agreements
from partner_pipeline.settings import PROJECT_ROOT
from partner_pipeline.validation import _persist_duckdb_connections, build_suite

AGREEMENTS = load_agreements(PROJECT_ROOT / "include" / "agreements")


def test_every_rule_of_the_contract_has_one_expectation():
    suite = build_suite(AGREEMENTS["acme_bank"])
    rules = [e.meta["rule"] for e in suite.expectations]
    assert len(rules) == len(set(rules))
    assert set(rules) == {
        "partner_record_id_missing", "partner_record_id_duplicate", "identifier_missing",
        "email_sha256_malformed", "phone_sha256_malformed",
        "consent_enrichment_missing", "consent_enrichment_not_boolean",
        "consent_activation_missing", "consent_activation_not_boolean",
        "consent_ts_missing", "consent_ts_invalid", "consent_ts_in_future",
        "recent_mortgage_wrong_type", "net_worth_band_not_allowed", "household_income_wrong_type",
        "household_income_out_of_range", "has_financial_advisor_wrong_type",
    }
    in_set = next(e for e in suite.expectations if e.meta["rule"] == "net_worth_band_not_allowed")
    assert in_set.value_set == AGREEMENTS["acme_bank"].attributes["net_worth_band"].allowed_values


def test_duckdb_persisted_connection_is_registered_once():
    """Guards the one private GX name we touch: if GX renames it, this fails before any drop does."""
    from great_expectations.execution_engine import sqlalchemy_execution_engine as engine

    _persist_duckdb_connections()
    _persist_duckdb_connections()
    assert sum(getattr(d, "value", None) == "duckdb" for d in engine._PERSISTED_CONNECTION_DIALECTS) == 1
    assert engine._dialect_requires_persisted_connection(connection_string="duckdb:////tmp/x.duckdb")
