"""Python reads the dbt project only through marts that are exposures (models/marts/_exposures.yml and
any other `exposures:` list): renaming or removing a model a consumer reads fails here, not at night."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from partner_pipeline.settings import PROJECT_ROOT

MODELS = PROJECT_ROOT / "dbt_project" / "models"
CODE = [*sorted((PROJECT_ROOT / "include" / "partner_pipeline").glob("*.py")), *sorted((PROJECT_ROOT / "dags").glob("*.py")),
        *sorted((PROJECT_ROOT / "plugins").glob("*.py"))]
# a relation after FROM or JOIN, optionally schema-qualified (marts.x, history.x, intermediate.x)
READ = re.compile(r"\b(?:from|join)\s+(?:([a-z_]+)\.)?([a-z_][a-z0-9_]*)\b", re.IGNORECASE)


def models() -> dict[str, str]:
    """model name -> its layer (the folder under models/)."""
    return {path.stem: path.relative_to(MODELS).parts[0] for path in MODELS.rglob("*.sql")}


def exposures() -> list[dict]:
    found = []
    for path in MODELS.rglob("*.yml"):
        found += (yaml.safe_load(path.read_text()) or {}).get("exposures") or []
    return found


def reads(path: Path, names: dict[str, str]) -> set[str]:
    """The models a module's SQL reads."""
    return {name for schema, name in READ.findall(path.read_text()) if name in names and schema not in ("raw", "audit", "activation")}


def test_python_reads_no_staging_or_intermediate_model():
    names = models()
    layered = [(path.name, match) for path in CODE
               for match in re.findall(r"\b(?:staging|intermediate)\.([a-z_][a-z0-9_]*)", path.read_text()) if match in names]
    assert layered == []
    read = {path.name: sorted(n for n in reads(path, names) if names[n] != "marts") for path in CODE}
    assert {module: found for module, found in read.items() if found} == {}


def test_every_model_a_module_reads_is_a_mart_of_that_modules_exposure():
    names = models()
    declared: dict[str, set[str]] = {}
    for exposure in exposures():
        depends = {re.fullmatch(r"ref\('([a-z0-9_]+)'\)", d)[1] for d in exposure["depends_on"]}
        assert depends <= set(names), f"exposure {exposure['name']} depends on unknown models {depends - set(names)}"
        for module in ((exposure.get("config") or {}).get("meta") or {}).get("python_modules") or []:
            assert (PROJECT_ROOT / module).is_file(), f"exposure {exposure['name']}: no file {module}"
            declared.setdefault(module, set()).update(depends)
    for path in CODE:
        module = str(path.relative_to(PROJECT_ROOT))
        found = reads(path, names)
        assert found <= declared.get(module, set()), f"{module} reads {sorted(found - declared.get(module, set()))}, " \
                                                     f"which no exposure naming it in config.meta.python_modules lists"
    assert {"include/partner_pipeline/activation.py", "include/partner_pipeline/insights.py",
            "include/partner_pipeline/run_report.py"} <= set(declared)


def test_the_check_sees_a_read_of_a_model():
    """The regex the two tests above rely on finds qualified and bare reads, and ignores pipeline tables."""
    names = {"segments": "marts", "int_segments": "intermediate", "match_report": "marts"}
    text = 'con.execute("SELECT * FROM marts.segments s JOIN intermediate.int_segments USING (x)")\n' \
           '"SELECT 1 FROM match_report" ; "FROM raw.segments"'
    assert {n for s, n in READ.findall(text) if n in names and s not in ("raw", "audit", "activation")} == set(names)
