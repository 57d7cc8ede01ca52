"""Governance files: labels, marketing actions, policies and destinations load, or fail naming file, field and fix."""

from __future__ import annotations

import shutil

import pytest
import yaml

from partner_pipeline.agreements import load_agreements
from partner_pipeline.governance import GovernanceError, load_governance
from partner_pipeline.settings import PROJECT_ROOT

GOVERNANCE = PROJECT_ROOT / "include" / "governance"


@pytest.fixture
def files(tmp_path):
    target = tmp_path / "governance"
    shutil.copytree(GOVERNANCE, target)
    return target


def edit(path, change):
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document))


def test_the_projects_files_load_and_every_agreement_label_is_declared():
    governance = load_governance(GOVERNANCE, load_agreements(PROJECT_ROOT / "include" / "agreements"))
    assert set(governance.destinations) == {"crm_email", "ads_customer_list", "personalization_api", "prospect_ads"}
    assert {p.id for p in governance.policies} >= {"email_targeting_needs_label", "no_special_categories_outbound"}


@pytest.mark.parametrize("change, file, expected", [
    (lambda d: d["destinations"]["personalization_api"].pop("connection_id"), "destinations.yaml",
     "field 'destinations.personalization_api': Value error, an http_audience destination needs connection_id"),
    (lambda d: d["destinations"]["crm_email"].update(hash_profile="sha1"), "destinations.yaml",
     "field 'destinations.crm_email.hash_profile': Input should be 'canonical', 'uid2', 'basic' or 'google'"),
    (lambda d: d["destinations"]["crm_email"].update(marketing_actions=["telemarketing"]), "destinations.yaml",
     "destination 'crm_email' field 'marketing_actions' names 'telemarketing', which policies.yaml does not declare"),
    (lambda d: d["policies"][0].update(denied_label="segmentation"), "policies.yaml",
     "give exactly one of requires_label"),
    (lambda d: d["policies"][0].update(requires_label="segmentaton"), "policies.yaml",
     "policy 'segmentation_needs_label' names label 'segmentaton', which is not declared under labels"),
])
def test_a_bad_file_names_file_field_and_fix(files, change, file, expected):
    edit(files / file, change)
    with pytest.raises(GovernanceError) as failure:
        load_governance(files, load_agreements(PROJECT_ROOT / "include" / "agreements"))
    assert str(files / file) in str(failure.value) and expected in str(failure.value)


def test_an_agreement_label_that_is_not_declared_is_refused(files, agreements_dir):
    path = agreements_dir / "acme_bank.yaml"
    path.write_text(path.read_text().replace("usage_labels: [segmentation, onsite_personalization]", "usage_labels: [segmentaton]", 1))
    with pytest.raises(GovernanceError, match=r"agreement acme_bank: attribute 'net_worth_band' field 'usage_labels' has "
                                              r"'segmentaton', which .*policies.yaml does not declare"):
        load_governance(files, load_agreements(agreements_dir))


@pytest.mark.parametrize(("identifiers", "expected"), [
    (["email", "partner_id:nobody"], "destination 'crm_email' field 'identifiers' names 'partner_id:nobody', but no agreement "
                                     "in include/agreements has partner_id 'nobody'; fix the partner id or remove the identifier"),
    (["email", "partner_id:globex_retail", "partner_id:acme_bank"], "more than one partner_id:<partner_id>"),
    (["email", "partner_id:Globex"], "field 'destinations.crm_email.identifiers.1'"),
    (["email", "email"], "lists an identifier twice"),
])
def test_a_bad_partner_id_identifier_is_refused_naming_file_destination_and_field(files, identifiers, expected):
    edit(files / "destinations.yaml", lambda d: d["destinations"]["crm_email"].update(identifiers=identifiers))
    with pytest.raises(GovernanceError) as failure:
        load_governance(files, load_agreements(PROJECT_ROOT / "include" / "agreements"))
    assert "destinations.yaml" in str(failure.value) and expected in str(failure.value)


def test_partner_person_id_usage_labels_must_be_declared(files, tmp_path):
    agreements = tmp_path / "agreements"
    shutil.copytree(PROJECT_ROOT / "include" / "agreements", agreements)
    path = agreements / "globex_retail.yaml"
    path.write_text(path.read_text() + "partner_person_id_usage_labels: [email_targeting, telemarketing]\n")
    with pytest.raises(GovernanceError, match=r"agreement globex_retail: field 'partner_person_id_usage_labels' has "
                                              r"'telemarketing', which .*policies.yaml does not declare as a usage label"):
        load_governance(files, load_agreements(agreements))
    path.write_text(path.read_text().replace(", telemarketing]", "]"))
    governance = load_governance(files, load_agreements(agreements))
    assert governance.destinations["crm_email"].partner_ids_of is None
