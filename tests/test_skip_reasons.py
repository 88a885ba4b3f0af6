"""Every skip says what the test needs, and docs/testing.md lists it: the list cannot drift.

A skip reason reads "needs KEY: how to get it". The reasons are found in the test sources:
the literal given to a skip (pytest.skip, skip_or_fail, skipif's and importorskip's
reason=, or a name assigned a literal), and what the "why not, or None" functions
(annotated ``-> str | None``) return, which the skips pass on.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parent
DOC = TESTS.parent / "docs" / "testing.md"
SKIPPERS = {"skip", "skip_or_fail"}  # the reason is the first argument
NEED_REASON = {"skipif", "importorskip"}  # reason= or pytest's own words


def literal(node: ast.expr) -> str | None:
    """The text a string literal starts with (an f-string's leading text), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        first = node.values[0] if node.values else None
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
        return ""  # starts with a value: says nothing of what is needed
    return None


def _name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _given(call: ast.Call) -> ast.expr | None:
    """The reason a skip call is given: reason=, or a skip's first argument."""
    for kw in call.keywords:
        if kw.arg == "reason":
            return kw.value
    if _name(call) in SKIPPERS and call.args:
        return call.args[0]
    return None


def _says_why_not(node: ast.AST) -> bool:
    """A "why not, or None" function: annotated to return str | None."""
    if not isinstance(node, ast.FunctionDef) or node.returns is None:
        return False
    return ast.unparse(node.returns) in ("str | None", "Optional[str]")


def reasons(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, text) of each skip reason written in one test source."""
    assigned: dict[str, list[ast.expr]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(node.value)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _name(node) in SKIPPERS | NEED_REASON:
            arg = _given(node)
            if arg is None:
                yield node.lineno, f"{_name(node)}() without a reason"
                continue
            values = assigned.get(arg.id, []) if isinstance(arg, ast.Name) else [arg]
            yield from ((node.lineno, t) for t in map(literal, values) if t is not None)
        elif _says_why_not(node):
            returned = [r for r in ast.walk(node) if isinstance(r, ast.Return) and r.value]
            for ret in returned:
                text = literal(ret.value) if ret.value is not None else None
                if text is not None:
                    yield ret.lineno, text


def every_reason() -> list[tuple[str, str]]:
    """(where, text) of every skip reason in tests/."""
    found = []
    for path in sorted(TESTS.glob("*.py")):
        if path.name == Path(__file__).name:
            continue  # this scanner's own literals are no skips
        tree = ast.parse(path.read_text(), str(path))
        found += [(f"{path.name}:{line}", text) for line, text in reasons(tree)]
    return found


def key(reason: str) -> str:
    """The stable part of a reason: "needs KEY" before the first colon."""
    return reason.split(":", 1)[0].strip()


class TestSkipReasons:
    def test_found(self) -> None:
        """The scan sees the skips it is meant to check (it is not silently empty)."""
        keys = {key(text) for _, text in every_reason()}
        assert {"needs root and util-linux unshare", "needs upsd", "needs mosquitto"} <= keys

    def test_each_says_what_is_needed(self) -> None:
        """Each reason starts "needs KEY: ..." and says how to get it after the colon."""
        wrong = [
            f"{where}: {text!r}"
            for where, text in every_reason()
            if not text.startswith("needs ") or ":" not in text
        ]
        assert wrong == [], "a skip reason reads 'needs WHAT: how to get it'"

    def test_each_is_in_docs_testing(self) -> None:
        """docs/testing.md names every reason's key, in backquotes."""
        doc = DOC.read_text()
        absent = sorted(
            f"{where}: `{key(text)}`"
            for where, text in every_reason()
            if f"`{key(text)}`" not in doc
        )
        assert absent == [], "add these to the table in docs/testing.md"

    def test_doc_lists_no_stale_reason(self) -> None:
        """Every key in the doc's table is still a reason some test gives."""
        table = [
            line.split("`")[1]
            for line in DOC.read_text().splitlines()
            if line.startswith("| `needs ")
        ]
        assert sorted(set(table) - {key(text) for _, text in every_reason()}) == []
