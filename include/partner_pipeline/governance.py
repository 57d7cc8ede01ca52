"""Usage labels, marketing actions, policies and activation destinations, as code.

Loaded from include/governance/{policies,destinations}.yaml and cross-checked against the
agreements (every usage label an agreement uses must be declared). A bad file raises
GovernanceError naming the file, the field and the fix. The policy check itself is SQL in dbt
(segment_policy_violations), run by the build and again right before sending.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from partner_pipeline.agreements import Agreement

DESTINATION_ID = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
SPECIAL_CATEGORY_LABEL = "special_category"
# how long the files delivered to an s3_file destination stay in our bucket, unless it says otherwise
DEFAULT_FILE_RETENTION_DAYS = 30
DEFAULT_MIN_AUDIENCE_SIZE = 100
PARTNER_ID_IDENTIFIER = "partner_id:"


class GovernanceError(ValueError):
    """A governance file that cannot be used; the message names file, field and fix."""


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    description: str = ""
    marketing_actions: list[str] = Field(min_length=1)
    requires_label: str | None = None  # an attribute without this label may not be used for the actions
    denied_label: str | None = None  # an attribute with this label may not be used for the actions

    @model_validator(mode="after")
    def _one_condition(self) -> Policy:
        if (self.requires_label is None) == (self.denied_label is None):
            raise ValueError("give exactly one of requires_label (the label an attribute needs) or denied_label "
                             "(the label that forbids the actions)")
        return self


class Destination(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["s3_file", "http_audience"]
    description: str = ""
    marketing_actions: list[str] = Field(min_length=1)
    hash_profile: Literal["canonical", "uid2", "basic", "google"]
    default_country_code: Annotated[str, Field(pattern=r"^[1-9][0-9]{0,2}$")]
    # email / phone hashes, and at most one `partner_id:<partner_id>`: that partner's partner_person_id,
    # sent where the agreement's partner_person_id_usage_labels allow the destination's actions
    identifiers: list[Annotated[str, Field(pattern=r"^(email|phone|partner_id:[a-z][a-z0-9_]*)$")]] = Field(min_length=1)
    # a prospect audience smaller than this is not sent at all (its members could be singled out)
    min_audience_size: Annotated[int, Field(ge=1)] = DEFAULT_MIN_AUDIENCE_SIZE
    # s3_file
    uri: Annotated[str, Field(pattern=r"^s3://[a-z0-9.\-]{3,63}/([^\s]*/)?$")] | None = None
    format: Literal["csv", "parquet"] = "csv"
    # days the delivered files stay in the export bucket (counted from the run date); see retention.py
    file_retention_days: Annotated[int, Field(ge=1, le=3650)] | None = None
    # http_audience
    connection_id: str | None = None
    timeout_seconds: Annotated[float, Field(gt=0)] = 30.0
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 6
    backoff_seconds: Annotated[float, Field(ge=0)] = 1.0
    backoff_max_seconds: Annotated[float, Field(ge=0)] = 60.0
    # rows per file (s3_file) or members per request (http_audience)
    batch_size: Annotated[int | None, Field(ge=1)] = None

    @model_validator(mode="after")
    def _fits_type(self) -> Destination:
        if self.type == "http_audience" and not self.connection_id:
            raise ValueError("an http_audience destination needs connection_id (the Airflow connection holding "
                             "its base URL as host and its bearer token as password)")
        if self.type == "s3_file" and self.connection_id:
            raise ValueError("connection_id only applies to type http_audience; s3_file uses the pipeline's S3 settings")
        if len(self.identifiers) != len(set(self.identifiers)):
            raise ValueError("field 'identifiers' lists an identifier twice; list each once")
        if sum(i.startswith(PARTNER_ID_IDENTIFIER) for i in self.identifiers) > 1:
            raise ValueError("field 'identifiers' lists more than one partner_id:<partner_id>; a destination accepts at most "
                             "one partner's ids (keep one, or declare a destination per partner)")
        if self.type == "http_audience" and self.file_retention_days is not None:
            raise ValueError("file_retention_days only applies to type s3_file (an http_audience destination keeps no files of ours)")
        return self

    @property
    def partner_ids_of(self) -> str | None:
        """The partner whose partner_person_id this destination accepts, if any."""
        return next((i.removeprefix(PARTNER_ID_IDENTIFIER) for i in self.identifiers if i.startswith(PARTNER_ID_IDENTIFIER)), None)

    @property
    def hashed_identifiers(self) -> list[str]:
        """email / phone, the identifiers sent hashed under hash_profile."""
        return [i for i in self.identifiers if not i.startswith(PARTNER_ID_IDENTIFIER)]

    @property
    def file_retention(self) -> int:
        return self.file_retention_days or DEFAULT_FILE_RETENTION_DAYS

    @property
    def rows_per_batch(self) -> int:
        return self.batch_size or (1000 if self.type == "http_audience" else 1_000_000)

    def export_uri(self, destination_id: str, default_bucket: str) -> str:
        return self.uri or f"s3://{default_bucket}/{destination_id}/"


class Governance(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: dict[str, str]
    marketing_actions: dict[str, str]
    policies: list[Policy]
    destinations: dict[str, Destination] = {}


def _describe(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  field '{field}': {err['msg']}")
    return "\n".join(lines)


def _read(path: Path) -> dict:
    if not path.is_file():
        raise GovernanceError(f"{path}: not found; set PIPELINE_GOVERNANCE_DIR to the folder holding policies.yaml "
                              f"and destinations.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise GovernanceError(f"{path}: not valid YAML ({exc}); fix the syntax") from exc
    if not isinstance(raw, dict):
        raise GovernanceError(f"{path}: expected a mapping at the top level")
    return raw


def load_governance(directory: Path, agreements: dict[str, Agreement]) -> Governance:
    policies_path, destinations_path = directory / "policies.yaml", directory / "destinations.yaml"
    raw = _read(policies_path)
    try:
        governance = Governance.model_validate({**raw, "destinations": _read(destinations_path).get("destinations") or {}})
    except ValidationError as exc:
        path = destinations_path if any(e["loc"][:1] == ("destinations",) for e in exc.errors()) else policies_path
        raise GovernanceError(_describe(path, exc)) from None

    problems = []
    for policy in governance.policies:
        for action in policy.marketing_actions:
            if action not in governance.marketing_actions:
                problems.append(f"{policies_path}: policy '{policy.id}' names marketing action '{action}', which is not "
                                f"declared under marketing_actions; declare it or fix the spelling")
        label = policy.requires_label or policy.denied_label
        if label not in governance.labels:
            problems.append(f"{policies_path}: policy '{policy.id}' names label '{label}', which is not declared under "
                            f"labels; declare it or fix the spelling")
    for destination_id, destination in governance.destinations.items():
        if not DESTINATION_ID.match(destination_id):
            problems.append(f"{destinations_path}: destination id '{destination_id}' must be lowercase snake_case")
        for action in destination.marketing_actions:
            if action not in governance.marketing_actions:
                problems.append(f"{destinations_path}: destination '{destination_id}' field 'marketing_actions' names "
                                f"'{action}', which {policies_path.name} does not declare; declare it there or fix the spelling")
        partner = destination.partner_ids_of
        if partner is not None and partner not in agreements:
            problems.append(f"{destinations_path}: destination '{destination_id}' field 'identifiers' names "
                            f"'partner_id:{partner}', but no agreement in include/agreements has partner_id '{partner}'; "
                            f"fix the partner id or remove the identifier")
    for agreement in agreements.values():
        for name, attribute in agreement.attributes.items():
            for label in attribute.usage_labels:
                if label not in governance.labels or label == SPECIAL_CATEGORY_LABEL:
                    problems.append(f"agreement {agreement.partner_id}: attribute '{name}' field 'usage_labels' has "
                                    f"'{label}', which {policies_path} does not declare as a usage label; use one of "
                                    f"{sorted(set(governance.labels) - {SPECIAL_CATEGORY_LABEL})} or declare it there")
        for label in agreement.partner_person_id_usage_labels:
            if label not in governance.labels or label == SPECIAL_CATEGORY_LABEL:
                problems.append(f"agreement {agreement.partner_id}: field 'partner_person_id_usage_labels' has '{label}', "
                                f"which {policies_path} does not declare as a usage label; use one of "
                                f"{sorted(set(governance.labels) - {SPECIAL_CATEGORY_LABEL})} or declare it there")
    if problems:
        raise GovernanceError("\n".join(problems))
    return governance

