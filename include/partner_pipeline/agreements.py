"""Data-sharing agreements as code: one YAML file per partner, validated on load.

A bad file raises AgreementError naming the file, the field and the fix.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

HASH_PROFILES = ("canonical", "uid2", "basic", "google")
CONSENT_COLUMNS = ("consent_enrichment", "consent_activation")
# every drop file has the required columns; an optional one (v2 `seed_id`, spec "Seeds in drops") may be absent
REQUIRED_RECORD_COLUMNS = ("partner_record_id", "partner_person_id", "email_sha256", "phone_sha256", *CONSENT_COLUMNS, "consent_ts")
OPTIONAL_RECORD_COLUMNS = ("seed_id",)
RECORD_COLUMNS = (*REQUIRED_RECORD_COLUMNS, *OPTIONAL_RECORD_COLUMNS)
# Article 9 GDPR special categories; a column whose name carries one of these words rejects the
# drop unless the agreement lists it as an attribute.
SPECIAL_CATEGORY_TERMS = (
    "health", "medical", "diagnosis", "disability", "religion", "religious", "belief", "ethnic",
    "ethnicity", "race", "racial", "political", "politics", "sexual", "sex_life", "orientation",
    "trade_union", "union_member", "biometric", "genetic",
)
ATTRIBUTE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
PARTNER_ID = re.compile(r"^[a-z0-9_]{2,40}$")


class AgreementError(ValueError):
    """An agreement file that cannot be used; the message names file, field and fix."""


class Attribute(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["string", "integer", "number", "boolean", "date"]
    allowed_values: list[str] | None = None
    min: float | None = None
    max: float | None = None
    usage_labels: list[str] = Field(min_length=1)
    special_category: bool = False
    description: str = ""

    @model_validator(mode="after")
    def _fits_type(self) -> Attribute:
        if self.allowed_values is not None and self.type != "string":
            raise ValueError("allowed_values only applies to type 'string'; use min/max for numbers")
        if (self.min is not None or self.max is not None) and self.type not in ("integer", "number"):
            raise ValueError("min/max only apply to type 'integer' or 'number'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    @property
    def duckdb_type(self) -> str:
        return {"string": "VARCHAR", "integer": "BIGINT", "number": "DOUBLE", "boolean": "BOOLEAN", "date": "DATE"}[self.type]


class DifferentialPrivacy(BaseModel):
    """Noised counts in the overlap report shared with the partner, and the budget they spend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epsilon_per_release: Annotated[float, Field(gt=0, le=10)]
    budget_per_period: Annotated[float, Field(gt=0)]
    period: Literal["month", "quarter", "year"] = "month"

    @model_validator(mode="after")
    def _budget_fits_one(self) -> DifferentialPrivacy:
        if self.epsilon_per_release > self.budget_per_period:
            raise ValueError(f"epsilon_per_release ({self.epsilon_per_release}) exceeds budget_per_period "
                             f"({self.budget_per_period}): not even one release would fit")
        return self

    def period_of(self, day: dt.date) -> str:
        return {"month": f"{day:%Y-%m}", "quarter": f"{day.year}-Q{(day.month - 1) // 3 + 1}", "year": f"{day.year}"}[self.period]


class SeedSet(BaseModel):
    """v2 (spec "Seed sets we send"): the seed set of our consenting customers this partner receives each night."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["csv.gz", "parquet"] = "csv.gz"
    # the Airflow Variable holding this agreement's key for seed_id (a keyed hash); never in the repo
    secret_variable: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,250}$")]


class Agreement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    partner_id: str
    agreement_id: Annotated[str, Field(min_length=1)]
    valid_from: dt.date
    valid_to: dt.date | None = None  # inclusive; open-ended when absent
    hash_profile: Literal["canonical", "uid2", "basic", "google"] = "canonical"
    default_country_code: str
    attributes: dict[str, Attribute]
    required_consents: list[Literal["consent_enrichment", "consent_activation"]] = ["consent_enrichment"]
    retention_days: Annotated[int, Field(gt=0)]
    max_bad_row_share: Annotated[float, Field(ge=0, le=1)]
    min_group_size: Annotated[int, Field(ge=1)]
    outbox_uri: str | None = None  # default: s3://<PIPELINE_OUTBOX_BUCKET>/<partner_id>/
    # overlap report: first-party columns (e.g. country) or this partner's categorical attributes
    overlap_dimensions: list[str] = ["country"]
    differential_privacy: DifferentialPrivacy | None = None
    # v2: a nightly seed set to the partner's outbox; rows keyed by partner_person_id alone (spec "Partner ids")
    seed_set: SeedSet | None = None
    partner_id_only_rows: bool = False
    # the usage labels under which our destinations may receive this partner's partner_person_id
    # (a destination listing `partner_id:<partner>` among its identifiers); none: the ids never leave
    partner_person_id_usage_labels: list[str] = []

    @field_validator("partner_id")
    @classmethod
    def _partner_id(cls, value: str) -> str:
        if not PARTNER_ID.match(value):
            raise ValueError("must match [a-z0-9_]{2,40} (the drop's folder name in the landing bucket)")
        return value

    @field_validator("default_country_code")
    @classmethod
    def _country_code(cls, value: str) -> str:
        if not re.fullmatch(r"[1-9][0-9]{0,2}", value):
            raise ValueError("must be the dialling code digits without '+', e.g. \"1\" or \"44\" (quote it in YAML)")
        return value

    @field_validator("attributes")
    @classmethod
    def _attribute_names(cls, value: dict[str, Attribute]) -> dict[str, Attribute]:
        for name in value:
            if not ATTRIBUTE_NAME.match(name):
                raise ValueError(f"attribute name {name!r} must be lowercase snake_case")
            if name in RECORD_COLUMNS or name.startswith("_"):
                raise ValueError(f"attribute name {name!r} clashes with a record column of the drop contract")
        return value

    @field_validator("outbox_uri")
    @classmethod
    def _outbox(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"s3://[a-z0-9.\-]{3,63}/([^\s]*/)?", value):
            raise ValueError("must look like s3://bucket/prefix/ (ending in '/')")
        return value

    @model_validator(mode="after")
    def _overlap_dimensions(self) -> Agreement:
        for name in self.overlap_dimensions:
            attribute = self.attributes.get(name)
            if attribute is not None and not (attribute.type == "boolean" or attribute.allowed_values):
                raise ValueError(f"overlap_dimensions: attribute {name!r} is not categorical (a boolean, or a string with "
                                 f"allowed_values); groups must come from a fixed list so that no group reveals itself")
            if attribute is None and not ATTRIBUTE_NAME.match(name):
                raise ValueError(f"overlap_dimensions: {name!r} is neither an attribute of this agreement nor a first-party column name")
        return self

    @model_validator(mode="after")
    def _window(self) -> Agreement:
        if self.valid_to is not None and self.valid_to < self.valid_from:
            raise ValueError(f"valid_to ({self.valid_to}) is before valid_from ({self.valid_from})")
        return self

    def is_valid_on(self, day: dt.date) -> bool:
        return self.valid_from <= day and (self.valid_to is None or day <= self.valid_to)

    def outbox(self, default_bucket: str) -> str:
        return self.outbox_uri or f"s3://{default_bucket}/{self.partner_id}/"


_FIXES = {
    "missing": "add the field",
    "extra_forbidden": "remove it or check its spelling",
    "literal_error": "use one of the allowed values",
    "date_from_datetime_parsing": "write the date as YYYY-MM-DD",
    "date_parsing": "write the date as YYYY-MM-DD",
    "date_type": "write the date as YYYY-MM-DD",
}


def _describe(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid agreement"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        fix = _FIXES.get(err["type"], "")
        lines.append(f"  field '{field}': {err['msg']}" + (f" ({fix})" if fix else ""))
    return "\n".join(lines)


def load_agreement(path: Path) -> Agreement:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise AgreementError(f"{path}: not valid YAML ({exc}); fix the syntax") from exc
    except ValueError as exc:  # YAML parses YYYY-MM-DD itself and rejects impossible dates
        raise AgreementError(f"{path}: a date is not a real calendar date ({exc}); write it as YYYY-MM-DD") from exc
    if not isinstance(raw, dict):
        raise AgreementError(f"{path}: expected a mapping of agreement fields at the top level")
    try:
        agreement = Agreement.model_validate(raw)
    except ValidationError as exc:
        raise AgreementError(_describe(path, exc)) from None
    if path.stem != agreement.partner_id:
        raise AgreementError(
            f"{path}: field 'partner_id' is {agreement.partner_id!r} but the file is named {path.name}; "
            f"rename the file to {agreement.partner_id}.yaml"
        )
    return agreement


def load_agreements(directory: Path) -> dict[str, Agreement]:
    """All agreements in directory, by partner_id. Any bad file fails the whole load, and so do two files
    for one partner (acme.yaml beside acme.yml: which one governs its drops?) or two agreements under one
    agreement_id (seed ids, issued seeds and manifests name an agreement by its id)."""
    if not directory.is_dir():
        raise AgreementError(f"{directory}: agreements directory not found; set PIPELINE_AGREEMENTS_DIR")
    agreements, files = {}, {}
    for path in sorted(directory.glob("*.y*ml")):
        agreement = load_agreement(path)
        if agreement.partner_id in agreements:
            raise AgreementError(f"{path}: field 'partner_id' is {agreement.partner_id!r}, as in "
                                 f"{files[agreement.partner_id]}; a partner has one agreement file: delete or merge one of them")
        same_id = [p for p, a in agreements.items() if a.agreement_id == agreement.agreement_id]
        if same_id:
            raise AgreementError(f"{path}: field 'agreement_id' is {agreement.agreement_id!r}, as in {files[same_id[0]]} "
                                 f"(partner {same_id[0]}); each agreement needs an id of its own: change one of them")
        agreements[agreement.partner_id], files[agreement.partner_id] = agreement, path
    return agreements


def special_category_term(column: str) -> str | None:
    """The special-category word a column name carries, if any."""
    tokens = column.lower()
    for term in SPECIAL_CATEGORY_TERMS:
        if re.search(rf"(^|_){term}(_|$)", tokens):
            return term
    return None
