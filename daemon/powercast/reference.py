"""The configuration reference, written from the schema itself.

Each key's type and bounds come from msgspec's view of the config classes, its default
from the class, and its meaning from the docstring under it in config.py: the reference
cannot drift from what the daemons accept (``powercast config reference`` prints it;
docs/configuration-reference.md is its output, checked by a test).
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import json
import math
from collections.abc import Iterator
from typing import Any

import msgspec
from msgspec import inspect as mi

from powercast import config

ROLES: tuple[tuple[str, type[msgspec.Struct]], ...] = (
    ("publisher", config.PublisherConfig),
    ("controller", config.ControllerConfig),
    ("relay", config.RelayConfig),
)

_DEFAULT_TEXT: dict[str, str] = {"_default_id": "this host's name"}
"""Defaults computed at load time, told in words rather than as this machine's value."""


@functools.cache
def _docstrings() -> dict[str, dict[str, str]]:
    """Class name -> field name -> the docstring written under the field in config.py."""
    tree = ast.parse(inspect.getsource(config))
    found: dict[str, dict[str, str]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        own: dict[str, str] = {}
        body = node.body
        for this, after in itertools.pairwise(body):
            if (
                isinstance(this, ast.AnnAssign)
                and isinstance(this.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                own[this.target.id] = " ".join(after.value.value.split())
        found[node.name] = own
    return found


def field_doc(cls: type, name: str) -> str:
    """The docstring of ``cls.name``, looked up through the classes it inherits from."""
    for klass in cls.__mro__:
        doc = _docstrings().get(klass.__name__, {}).get(name)
        if doc:
            return doc
    return ""


def class_doc(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


def _bounds(t: Any) -> str:
    low = f">= {_num(t.ge)}" if t.ge is not None else f"> {_num(t.gt)}" if t.gt is not None else ""
    high = f"<= {_num(t.le)}" if t.le is not None else f"< {_num(t.lt)}" if t.lt is not None else ""
    return ", ".join(part for part in (low, high) if part)


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def type_text(t: mi.Type) -> str:
    """A type as an operator reads it: ``number (>= 0, <= 50)``, ``"max" or "mean"``."""
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.IntType | mi.FloatType):
        word = "integer" if isinstance(t, mi.IntType) else "number"
        bounds = _bounds(t)
        return f"{word} ({bounds})" if bounds else word
    if isinstance(t, mi.StrType):
        return "text"
    if isinstance(t, mi.LiteralType):
        return " or ".join(json.dumps(v) for v in t.values)
    if isinstance(t, mi.ListType):
        return f"list of {type_text(t.item_type)}"
    if isinstance(t, mi.DictType):
        return f"table of {type_text(t.key_type)} = {type_text(t.value_type)}"
    if isinstance(t, mi.UnionType):
        shown = [type_text(u) for u in t.types if not isinstance(u, mi.NoneType)]
        return " or ".join(shown)
    if isinstance(t, mi.StructType):
        return "table"
    return type(t).__name__.removesuffix("Type").lower()


def default_text(field: mi.Field) -> str:
    if field.required:
        return "(required)"
    if field.default_factory is not msgspec.NODEFAULT:
        name = getattr(field.default_factory, "__name__", "")
        if name in _DEFAULT_TEXT:
            return _DEFAULT_TEXT[name]
        value = field.default_factory()
    else:
        value = field.default
    if value is None:
        return "none"
    if isinstance(value, msgspec.Struct) or (
        isinstance(value, list) and value and isinstance(value[0], msgspec.Struct)
    ):
        return "see below"
    if isinstance(value, float) and math.isfinite(value):
        return f"`{value:g}`" if value != int(value) else f"`{value:.1f}`"
    return f"`{json.dumps(value)}`"


def _structs(t: mi.Type) -> list[mi.StructType]:
    """The tables a key holds: itself, its list's items, or each kind of a tagged union."""
    if isinstance(t, mi.StructType):
        return [t]
    if isinstance(t, mi.ListType):
        return _structs(t.item_type)
    if isinstance(t, mi.UnionType):
        return [s for u in t.types for s in _structs(u)]
    return []


def _is_list(t: mi.Type) -> bool:
    if isinstance(t, mi.UnionType):
        return any(_is_list(u) for u in t.types)
    return isinstance(t, mi.ListType)


def _tables(
    info: mi.StructType, path: str, seen: dict[type, str]
) -> Iterator[tuple[str, mi.StructType, str]]:
    """(heading path, table, note) of ``info`` and every table under it, depth first; a
    class met before is named once, where it first appears."""
    yield path, info, ""
    seen[info.cls] = path
    for field in info.fields:
        inner = _structs(field.type)
        if not inner:
            continue
        sub = f"{path}.{field.name}" if path else field.name
        for table in inner:
            kind = str(table.tag) if table.tag is not None else ""
            heading = f"{sub}[{kind}]" if _is_list(field.type) else sub
            if table.cls in seen:
                yield heading, table, f"as `{seen[table.cls]}`"
                continue
            yield from _tables(table, heading, seen)


def _row(cls: type, field: mi.Field) -> str:
    doc = field_doc(cls, field.name) or "—"
    return f"| `{field.name}` | {type_text(field.type)} | {default_text(field)} | {doc} |"


def undocumented() -> list[str]:
    """``role: table.key`` of every key without a docstring."""
    missing: list[str] = []
    for role, root in ROLES:
        for path, table, note in _tables(mi.type_info(root), "", {}):  # type: ignore[arg-type]
            if note:
                continue
            for field in table.fields:
                is_tag = table.tag_field == field.name
                if not is_tag and not _structs(field.type) and not field_doc(table.cls, field.name):
                    missing.append(f"{role}: {path + '.' if path else ''}{field.name}")
    return missing


def render() -> str:
    """The whole reference, as Markdown."""
    out = [
        "# Configuration reference",
        "",
        "Every key each role's TOML file accepts, with its type, bounds, default and",
        "meaning. Written by `powercast config reference` from the schema the daemons use;",
        "[configuration.md](configuration.md) explains how the parts work together.",
    ]
    for role, root in ROLES:
        out += ["", f"## {role}", "", class_doc(root) or f"`/etc/powercast/{role}.toml`."]
        for path, table, note in _tables(mi.type_info(root), "", {}):  # type: ignore[arg-type]
            if path:
                out += ["", f"### `{path}`", ""]
                if table.tag is not None:
                    out += [f'With `{table.tag_field} = "{table.tag}"`.', ""]
                if note:
                    out.append(f"{class_doc(table.cls)} Keys {note}.".strip())
                    continue
                if class_doc(table.cls):
                    out += [class_doc(table.cls), ""]
            else:
                out.append("")
            rows = [
                _row(table.cls, field)
                for field in table.fields
                if not _structs(field.type) and field.name != table.tag_field
            ]
            if rows:
                out += ["| key | type | default | meaning |", "|---|---|---|---|", *rows]
    return "\n".join(out) + "\n"
