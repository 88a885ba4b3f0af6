"""The configuration reference is the schema's own: every key, as the daemons read it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from msgspec import inspect as mi

from powercast import config, reference

pytestmark = pytest.mark.unit

DOC = Path(__file__).parent.parent / "docs" / "configuration-reference.md"


def leaves(info: mi.StructType, path: str, seen: set[type]) -> set[str]:
    """Every key that holds a value, as ``table.key``; a table met before is not walked
    again (the reference names it once and refers to it)."""
    seen.add(info.cls)
    found = set()
    for field in info.fields:
        inner = reference._structs(field.type)
        if not inner:
            found.add(f"{path}{field.name}")
        for table in inner:
            if table.cls not in seen:
                found |= leaves(table, f"{path}{field.name}.", seen)
    return found


def documented(section: str) -> set[str]:
    """``table.key`` of each row of a role's section, tables named by their headings."""
    found, table = set(), ""
    for line in section.splitlines():
        if line.startswith("### `"):
            table = re.sub(r"\[[a-z]*\]", "", line[5:].rstrip("`")) + "."
        elif (row := re.match(r"\| `(\w+)` \|", line)) is not None:
            found.add(f"{table}{row[1]}")
    return found


def test_doc_is_what_config_reference_prints() -> None:
    """docs/configuration-reference.md is current: `powercast config reference > it`."""
    assert DOC.read_text() == reference.render()


@pytest.mark.parametrize(("role", "root"), reference.ROLES)
def test_every_key_is_in_the_reference(role: str, root: type) -> None:
    """Each key of each role has a row under its table, and no row names a key that is not."""
    section = DOC.read_text().split(f"\n## {role}\n", 1)[1].split("\n## ", 1)[0]
    schema = leaves(mi.type_info(root), "", set())  # type: ignore[arg-type]
    assert sorted(schema - documented(section)) == [], "keys missing from the reference"
    assert sorted(documented(section) - schema) == [], "rows for keys that do not exist"


def test_a_key_shows_its_type_default_and_meaning() -> None:
    row = next(
        line for line in reference.render().splitlines() if line.startswith("| `temp_high_c` |")
    )
    assert row == (
        "| `temp_high_c` | number (>= -273.15, <= 1000) | `35.0` |"
        f" {reference.field_doc(config.PolicySettings, 'temp_high_c')} |"
    )


def test_every_key_says_what_it_means() -> None:
    """Each key has a docstring under it in config.py: the reference's "meaning" column."""
    assert reference.undocumented() == []
