"""The only ways text of ours enters SQL: an identifier checked against a strict pattern, a pipeline-made path."""

from __future__ import annotations

import re
from pathlib import Path

# What may be spliced into SQL as an identifier: our own names (record columns, agreement attributes,
# partner ids after validation). Partner-controlled text never is: it is bound as a parameter.
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_]{1,63}$")


def quote_ident(name: str) -> str:
    """The one way an identifier enters SQL text: checked against a strict pattern, then quoted."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not a safe SQL identifier ([A-Za-z0-9_]{{1,63}})")
    return f'"{name}"'


def quote_configured_name(name: str) -> str:
    """A name taken from the deployment's configuration as an identifier: the warehouse file's name,
    which dbt makes its catalog's name (any characters; quoted, its double quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def quote_path(path: Path) -> str:
    """A pipeline-made file path as a SQL string literal, for ATTACH (which takes no bound parameter)."""
    return "'" + str(path).replace("'", "''") + "'"
