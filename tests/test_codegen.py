import pytest
import yaml

from partner_pipeline.agreements import load_agreements
from partner_pipeline.codegen import generated_files
from partner_pipeline.settings import PROJECT_ROOT

FILES = generated_files(load_agreements(PROJECT_ROOT / "include" / "agreements"), PROJECT_ROOT / "expectations")


@pytest.mark.parametrize("path", sorted(FILES), ids=lambda p: p.name)
def test_committed_generated_files_are_current(path):
    assert path.read_text() == FILES[path], f"{path} is stale: run `make generate`"


def test_partner_columns_carry_usage_labels():
    doc = yaml.safe_load(FILES[PROJECT_ROOT / "dbt_project" / "models" / "marts" / "_enriched_profiles__models.yml"])
    columns = {c["name"]: c for c in doc["models"][0]["columns"]}
    assert columns["acme_bank__household_income"]["meta"]["usage_labels"] == ["segmentation", "onsite_personalization"]
    assert columns["globex_retail__loyalty_tier"]["meta"]["usage_labels"] == ["segmentation", "email_targeting", "advertising",
                                                                            "onsite_personalization", "prospecting"]
    assert "email" not in columns and "phone" not in columns
