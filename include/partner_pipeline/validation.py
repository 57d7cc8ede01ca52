"""Row validity (spec "Row validity") as a Great Expectations suite built from the agreement.

The suite is pushed down into the drop's staging DuckDB file through GX's SQL data source, so
no drop is ever held in pandas. Each expectation carries `meta.rule`; the rows it rejects are
found by the suite's own conditions read back as SQL (row_rules), in one scan of the drop for every
rule (row_failures_insert), and ingest checks that they count per rule what GX counted: every rule
has one definition. Stored results hold row ids and counts only: never a personal data value.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from partner_pipeline.agreements import CONSENT_COLUMNS, Agreement
from partner_pipeline.contracts import StageFile
from partner_pipeline.sqltext import quote_ident

VALIDATION_VIEW = "validation_input"
_HEX64 = "regexp_full_match({col}, '[0-9a-f]{{{{64}}}}')"  # doubled braces: GX formats the query
_VALUE_KEYS = ("partial_unexpected_list", "partial_unexpected_counts", "partial_unexpected_index_list",
               "unexpected_list", "unexpected_index_list")


def validation_view_sql(agreement: Agreement, delivered_at: str) -> str:
    """The relation the suite runs on: the staged rows plus the delivery time and numeric views."""
    numeric = [
        f"TRY_CAST({quote_ident(name)} AS DOUBLE) AS {quote_ident(name + '__number')}"
        for name, attr in agreement.attributes.items() if attr.type in ("integer", "number")
    ]
    extra = "".join(f", {n}" for n in numeric)
    # a view takes no bound parameters: re-rendering the parsed time leaves only digits and - : . + T
    delivered = dt.datetime.fromisoformat(delivered_at).isoformat()
    return (f"CREATE OR REPLACE VIEW {VALIDATION_VIEW} AS SELECT *, "
            f"TIMESTAMPTZ '{delivered}' AS _delivered_at{extra} FROM {StageFile.RECORDS}")


def build_suite(agreement: Agreement):
    """The expectation suite for this agreement's drops; each expectation names its rule and its fix."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    def meta(rule: str, fix: str) -> dict:
        return {"rule": rule, "fix": fix}

    def rows(rule: str, where: str, fix: str):
        return gxe.UnexpectedRowsExpectation(
            unexpected_rows_query=f"SELECT {StageFile.ROW} FROM {{batch}} WHERE {where}", description=fix, meta=meta(rule, fix))

    e = [
        gxe.ExpectColumnValuesToNotBeNull(column="partner_record_id", meta=meta(
            "partner_record_id_missing", "Give every row a partner_record_id.")),
        rows("partner_record_id_duplicate",
             "partner_record_id IN (SELECT partner_record_id FROM {batch} GROUP BY partner_record_id HAVING count(*) > 1)",
             "Make partner_record_id unique within the drop (every copy of a repeated id is quarantined)."),
        rows("identifier_missing", "email_sha256 IS NULL AND phone_sha256 IS NULL AND seed_id IS NULL"
             + (" AND partner_person_id IS NULL" if agreement.partner_id_only_rows else ""),
             "Send email_sha256 or phone_sha256 (or both), or the seed_id of our seed set, on every row"
             + (", or partner_person_id alone to refresh a person already sent with hashes." if agreement.partner_id_only_rows
                else " (partner_person_id alone is not accepted: the agreement does not set partner_id_only_rows).")),
        rows("seed_id_unknown", f"seed_id IS NOT NULL AND seed_id NOT IN (SELECT seed_id FROM {StageFile.ISSUED_SEEDS})",
             f"Send only seed_id values from the seed sets we sent you under agreement {agreement.agreement_id} "
             f"(outbox {agreement.partner_id}/seeds/<date>/); a seed of another agreement or partner matches nothing."),
    ]
    for col in ("email_sha256", "phone_sha256"):
        e.append(rows(f"{col}_malformed", f"{col} IS NOT NULL AND NOT {_HEX64.format(col=col)}",
                      f"Send {col} as 64 lowercase hex characters: the SHA-256 of the identifier normalized under "
                      f"the '{agreement.hash_profile}' hash profile."))
    for col in CONSENT_COLUMNS:
        e.append(gxe.ExpectColumnValuesToNotBeNull(column=col, meta=meta(f"{col}_missing", f"Send {col} on every row.")))
        e.append(gxe.ExpectColumnValuesToBeInSet(column=col, value_set=["true", "false"], meta=meta(
            f"{col}_not_boolean", f"Write {col} as true or false.")))
    e += [
        gxe.ExpectColumnValuesToNotBeNull(column="consent_ts", meta=meta(
            "consent_ts_missing", "Send consent_ts, when the consent was captured, on every row.")),
        rows("consent_ts_invalid", "consent_ts IS NOT NULL AND TRY_CAST(consent_ts AS TIMESTAMPTZ) IS NULL",
             "Write consent_ts as an ISO 8601 UTC timestamp, e.g. 2026-11-20T13:45:00Z."),
        rows("consent_ts_in_future", "TRY_CAST(consent_ts AS TIMESTAMPTZ) > _delivered_at",
             "consent_ts is after the delivery was completed (_SUCCESS); check the clock or time zone of the export."),
    ]
    for name, attr in agreement.attributes.items():
        col = quote_ident(name)
        if attr.type == "string" and attr.allowed_values is not None:
            e.append(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=list(attr.allowed_values), meta=meta(
                f"{name}_not_allowed", f"Use one of the agreed values for {name}: {', '.join(attr.allowed_values)}.")))
        elif attr.type == "boolean":
            e.append(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=["true", "false"], meta=meta(
                f"{name}_wrong_type", f"Write {name} as true or false.")))
        elif attr.type == "date":
            e.append(rows(f"{name}_wrong_type", f"{col} IS NOT NULL AND NOT (regexp_full_match({col}, '\\d{{{{4}}}}-\\d{{{{2}}}}-\\d{{{{2}}}}') "
                          f"AND TRY_CAST({col} AS DATE) IS NOT NULL)", f"Write {name} as a date, YYYY-MM-DD."))
        elif attr.type in ("integer", "number"):
            valid = (f"regexp_full_match({col}, '-?[0-9]+')" if attr.type == "integer"
                     else f"isfinite(TRY_CAST({col} AS DOUBLE))")
            e.append(rows(f"{name}_wrong_type", f"{col} IS NOT NULL AND NOT coalesce({valid}, false)",
                          f"Write {name} as {'a whole number' if attr.type == 'integer' else 'a number'}."))
            if attr.min is not None or attr.max is not None:
                e.append(gxe.ExpectColumnValuesToBeBetween(column=f"{name}__number", min_value=attr.min, max_value=attr.max, meta=meta(
                    f"{name}_out_of_range", f"Keep {name} within the agreed range "
                    f"{'-inf' if attr.min is None else f'{attr.min:g}'} to {'inf' if attr.max is None else f'{attr.max:g}'}.")))
    return gx.ExpectationSuite(
        name=f"{agreement.partner_id}__records",
        expectations=e,
        meta={"agreement_id": agreement.agreement_id, "partner_id": agreement.partner_id,
              "generated_from": f"include/agreements/{agreement.partner_id}.yaml"},
    )


def row_rules(agreement: Agreement) -> dict[str, str]:
    """Rule -> SQL condition true for a row of VALIDATION_VIEW that breaks it, read off the suite (the
    one definition of the row rules) with GX's own semantics: a column check ignores NULL (only the
    *_missing rules see it), ranges are inclusive. For code that checks rows without GX (the
    benchmark's floor); the pipeline runs the suite itself."""
    import great_expectations.expectations as gxe

    def literal(value) -> str:
        return "'" + str(value).replace("'", "''") + "'"

    rules = {}
    for e in build_suite(agreement).expectations:
        column = quote_ident(e.column) if hasattr(e, "column") else None
        if isinstance(e, gxe.UnexpectedRowsExpectation):
            condition = e.unexpected_rows_query.format(batch=VALIDATION_VIEW).split(" WHERE ", 1)[1]
        elif isinstance(e, gxe.ExpectColumnValuesToNotBeNull):
            condition = f"{column} IS NULL"
        elif isinstance(e, gxe.ExpectColumnValuesToBeInSet):
            condition = f"{column} IS NOT NULL AND {column} NOT IN ({', '.join(literal(v) for v in e.value_set)})"
        elif isinstance(e, gxe.ExpectColumnValuesToBeBetween):
            bounds = [f"{column} >= {float(e.min_value)!r}"] * (e.min_value is not None) + \
                     [f"{column} <= {float(e.max_value)!r}"] * (e.max_value is not None)
            condition = f"{column} IS NOT NULL AND NOT ({' AND '.join(bounds)})"
        else:
            raise TypeError(f"rule {e.meta['rule']}: no SQL form for {type(e).__name__}")
        rules[e.meta["rule"]] = condition
    return rules


def row_failures_insert(agreement: Agreement) -> tuple[str, list[str]]:
    """The INSERT of one StageFile.ROW_FAILURES row per (row of VALIDATION_VIEW, rule it breaks), and its
    parameters (the rule names): one scan for every rule, where GX's own row queries take one each."""
    rules = row_rules(agreement)
    broken = ", ".join(f"CASE WHEN {condition} THEN ? END" for condition in rules.values())
    any_broken = " OR ".join(f"({condition})" for condition in rules.values())
    return (f"INSERT INTO {StageFile.ROW_FAILURES} SELECT {StageFile.ROW}, unnest(list_filter([{broken}], rule -> rule IS NOT NULL)) "
            f"FROM {VALIDATION_VIEW} WHERE {any_broken}"), list(rules)


def suite_json(agreement: Agreement) -> str:
    """The suite as stored in expectations/: stable text, so a stale copy shows in git diff."""
    data = build_suite(agreement).to_json_dict()
    for expectation in data["expectations"]:
        expectation.pop("id", None)
    data.pop("id", None)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


@dataclass
class ValidationOutcome:
    failures_by_rule: dict[str, int]
    fixes: dict[str, str]
    result_path: Path
    docs_path: Path


def _quiet_gx() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    for name in ("great_expectations", "great_expectations._docs_decorators"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _persist_duckdb_connections() -> None:
    """GX closes its SQL connection between metric queries; DuckDB then loses the batch.

    Registering DuckDB among the dialects GX keeps one persisted connection for is the fix
    measured in ../shared/STACK-NOTES.md (GX issues 10738, 11579). It touches a private name,
    so great-expectations is pinned exactly and tests/test_validation.py covers it.
    """
    from great_expectations.execution_engine import sqlalchemy_execution_engine as engine

    class DuckDBDialect:
        value = "duckdb"

        def __eq__(self, other) -> bool:
            return str(getattr(other, "value", other)).lower() == "duckdb"

        def __hash__(self) -> int:
            return hash("duckdb")

    if not any(getattr(d, "value", None) == "duckdb" for d in engine._PERSISTED_CONNECTION_DIALECTS):
        engine._PERSISTED_CONNECTION_DIALECTS = (*engine._PERSISTED_CONNECTION_DIALECTS, DuckDBDialect())


def validate_staged(stage_path: Path, agreement: Agreement, out_dir: Path, name: str, duckdb_config: dict[str, str]) -> ValidationOutcome:
    """Run the suite on the staged drop; return the failures per rule, each rule's fix and the stored results.

    The caller must have closed its own connections to stage_path.
    """
    _quiet_gx()
    import great_expectations as gx

    _persist_duckdb_connections()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_sql(name="staged_drop", connection_string=f"duckdb:///{stage_path}",
                                          kwargs={"connect_args": {"config": duckdb_config}})
    batch = source.add_table_asset(name=VALIDATION_VIEW, table_name=VALIDATION_VIEW).add_batch_definition_whole_table("drop")
    suite = context.suites.add(build_suite(agreement))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    try:
        result = definition.run(result_format={
            "result_format": "SUMMARY", "partial_unexpected_count": 0,
            "unexpected_index_column_names": [StageFile.ROW],
        })
    finally:
        _close(source)
        del context, source, batch, definition
        gc.collect()  # drops GX's remaining sqlalchemy/duckdb handles on the stage file
    failures: dict[str, int] = {}
    fixes: dict[str, str] = {}
    for r in result.results:
        rule = r.expectation_config.meta["rule"]
        if r.exception_info and r.exception_info.get("raised_exception", any(
                v.get("raised_exception") for v in r.exception_info.values() if isinstance(v, dict))):
            raise RuntimeError(f"expectation for rule {rule} could not run: {json.dumps(r.exception_info)[:2000]}")
        if r.success:
            continue
        is_rows = r.expectation_config.type == "unexpected_rows_expectation"
        failures[rule] = r.result["observed_value"] if is_rows else r.result["unexpected_count"]
        fixes[rule] = r.expectation_config.meta["fix"]
    out_dir.mkdir(parents=True, exist_ok=True)
    document = _without_values(result.to_json_dict())
    result_path = out_dir / f"{name}.json"
    result_path.write_text(json.dumps(document, indent=2, sort_keys=True, default=str))
    docs_path = out_dir / f"{name}.html"
    docs_path.write_text(_render_data_docs(result, document))
    return ValidationOutcome(failures, fixes, result_path, docs_path)


def _close(source) -> None:
    """Release the stage file: GX's close() leaves the persisted connection and the data source's engine open."""
    engine = source.get_execution_engine()
    if engine._connection is not None:
        engine._connection.close()
        engine._connection = None
    engine.close()
    if source._engine is not None:
        source._engine.dispose()


def _without_values(node):
    """Drop every list of unexpected values GX may carry, keeping counts and row ids."""
    if isinstance(node, dict):
        return {k: _without_values(v) for k, v in node.items() if k not in _VALUE_KEYS}
    if isinstance(node, list):
        return [_without_values(v) for v in node]
    return node


def _render_data_docs(result, document: dict) -> str:
    from great_expectations.core import ExpectationSuiteValidationResult
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    scrubbed = ExpectationSuiteValidationResult(**{
        **{k: getattr(result, k) for k in ("success", "suite_name", "statistics", "meta")},
        "results": [
            type(r)(**{**r.to_json_dict(), "expectation_config": r.expectation_config, "result": _without_values(r.result)})
            for r in result.results
        ],
    })
    return DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(scrubbed))

