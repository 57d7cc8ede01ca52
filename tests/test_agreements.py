import datetime as dt

import pytest

from partner_pipeline.agreements import AgreementError, load_agreement, load_agreements, special_category_term
from partner_pipeline.settings import PROJECT_ROOT

GOOD = """\
partner_id: demo_partner
agreement_id: demo-1
valid_from: 2026-01-01
valid_to: 2026-06-30
hash_profile: basic
default_country_code: "44"
retention_days: 30
max_bad_row_share: 0.1
min_group_size: 10
attributes:
  tier:
    type: string
    allowed_values: [a, b]
    usage_labels: [segmentation]
"""


def write(tmp_path, text, name="demo_partner.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_project_agreements_load():
    agreements = load_agreements(PROJECT_ROOT / "include" / "agreements")
    assert set(agreements) == {"acme_bank", "globex_retail"}
    acme = agreements["acme_bank"]
    assert acme.hash_profile == "canonical"
    assert acme.attributes["household_income"].max == 10_000_000
    assert acme.outbox("partner-outbox") == "s3://partner-outbox/acme_bank/"


def test_validity_window_is_inclusive(tmp_path):
    agreement = load_agreement(write(tmp_path, GOOD))
    assert agreement.is_valid_on(dt.date(2026, 1, 1))
    assert agreement.is_valid_on(dt.date(2026, 6, 30))
    assert not agreement.is_valid_on(dt.date(2025, 12, 31))
    assert not agreement.is_valid_on(dt.date(2026, 7, 1))


@pytest.mark.parametrize(("change", "field", "fix"), [
    (("hash_profile: basic", "hash_profile: sha1"), "hash_profile", "use one of the allowed values"),
    (("retention_days: 30\n", ""), "retention_days", "add the field"),
    (("min_group_size: 10", "min_group_size: 10\nmin_grup_size: 3"), "min_grup_size", "remove it or check its spelling"),
    (("allowed_values: [a, b]", "allowed_values: [a, b]\n    min: 3"), "attributes.tier", "min/max only apply"),
    (('default_country_code: "44"', "default_country_code: 44"), "default_country_code", "valid string"),
    (("valid_to: 2026-06-30", "valid_to: 2025-06-30"), "(top level)", "valid_to (2025-06-30) is before valid_from"),
    (("max_bad_row_share: 0.1", "max_bad_row_share: 1.5"), "max_bad_row_share", "less than or equal to 1"),
])
def test_bad_agreement_names_file_field_and_fix(tmp_path, change, field, fix):
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(AgreementError) as raised:
        load_agreement(path)
    message = str(raised.value)
    assert str(path) in message
    assert f"field '{field}'" in message
    assert fix in message


def test_file_name_must_match_partner_id(tmp_path):
    with pytest.raises(AgreementError, match="rename the file to demo_partner.yaml"):
        load_agreement(write(tmp_path, GOOD, name="other.yaml"))


def test_impossible_date_and_bad_yaml(tmp_path):
    with pytest.raises(AgreementError, match="YYYY-MM-DD"):
        load_agreement(write(tmp_path, GOOD.replace("2026-06-30", "2026-06-31")))
    with pytest.raises(AgreementError, match="not valid YAML"):
        load_agreement(write(tmp_path, GOOD + "attributes: [\n"))


def test_one_bad_file_fails_the_whole_directory(tmp_path):
    write(tmp_path, GOOD)
    write(tmp_path, "partner_id: broken\n", name="broken.yaml")
    with pytest.raises(AgreementError, match="broken.yaml"):
        load_agreements(tmp_path)


OTHER_PARTNER = GOOD.replace("partner_id: demo_partner", "partner_id: other_partner")


@pytest.mark.parametrize(("name", "text", "field", "fix", "mended", "loaded_ids"), [
    # a second file for one partner (which one would govern its drops?): mended by deleting one
    ("demo_partner.yml", GOOD.replace("demo-1", "demo-2"), "field 'partner_id'", "delete or merge one of them", None, {"demo-1"}),
    # two agreements under one agreement_id: mended by giving the second its own
    ("other_partner.yaml", OTHER_PARTNER, "field 'agreement_id' is 'demo-1'", "change one of them",
     OTHER_PARTNER.replace("demo-1", "other-1"), {"demo-1", "other-1"}),
])
def test_two_agreement_files_that_clash_fail_the_load_naming_both(tmp_path, name, text, field, fix, mended, loaded_ids):
    first = write(tmp_path, GOOD)
    second = write(tmp_path, text, name=name)
    with pytest.raises(AgreementError) as raised:
        load_agreements(tmp_path)
    message = str(raised.value)
    assert str(second) in message and str(first) in message
    assert field in message and fix in message
    if mended is None:
        second.unlink()
    else:
        second.write_text(mended)
    assert {a.agreement_id for a in load_agreements(tmp_path).values()} == loaded_ids


@pytest.mark.parametrize(("column", "term"), [
    ("health_condition", "health"), ("religion", "religion"), ("ethnicity_code", "ethnicity"),
    ("political_opinion", "political"), ("favourite_colour", None), ("wealth_band", None), ("unionized", None),
])
def test_special_category_terms_match_whole_words(column, term):
    assert special_category_term(column) == term
