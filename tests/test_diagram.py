"""`powercast diagram`: the fan policy's chart from the real class, as text or an image."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from powercast import diagram
from powercast.cli import main
from powercast.policy import FanChart

README = Path(__file__).parent.parent / "README.md"


def edges(text: str) -> set[tuple[str, str]]:
    """The ``a --> b`` moves in Mermaid text, without the initial pseudo-state."""
    return {(a, b) for a, b in re.findall(r"^\s*(\w+) --> (\w+)", text, re.MULTILINE) if a != "[*]"}


def chart_moves() -> set[tuple[str, str]]:
    return {(t.source.id, t.target.id) for s in FanChart.states for t in s.transitions}


class TestDiagram:
    @pytest.mark.unit
    def test_prints_mermaid_of_the_real_chart(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without --output: Mermaid text with every state and exactly the chart's moves."""
        assert main(["diagram"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("stateDiagram-v2\n")
        assert "[*] --> failsafe" in out
        assert edges(out) == chart_moves()
        assert {a for a, b in edges(out) if b == "shedding"} == {"on_battery", "thermal_override"}

    @pytest.mark.unit
    def test_readme_shows_the_current_chart(self) -> None:
        """README's "How it decides" holds the diagram as `powercast diagram` prints it."""
        text = README.read_text()
        section = text.split("## How it decides", 1)[1].split("\n## ", 1)[0]
        block = re.search(r"```mermaid\n(.*?)```", section, re.DOTALL)
        assert block is not None, "no ```mermaid block under How it decides"
        assert block[1] == diagram.mermaid()

    @pytest.mark.system
    @pytest.mark.skipif(
        shutil.which("dot") is None,
        reason="needs Graphviz's dot: apt-get install graphviz, or run .ci/run",
    )
    @pytest.mark.parametrize(("suffix", "magic"), [(".png", b"\x89PNG"), (".svg", b"<?xml")])
    def test_writes_an_image_with_graphviz(
        self, tmp_path: Path, suffix: str, magic: bytes, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--output FILE.png/.svg: an image drawn by dot, in the format the suffix names."""
        pytest.importorskip(
            "pydot", reason="needs pydot: pip install -e '.[test]', or run tests/run"
        )
        out = tmp_path / f"chart{suffix}"
        assert main(["diagram", "--output", str(out)]) == 0
        assert out.read_bytes().startswith(magic)
        assert capsys.readouterr().out == f"{out}: the fan policy's state chart\n"

    @pytest.mark.system  # tries to start dot (not found): a fork
    def test_without_dot_one_line_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """No Graphviz in PATH: exit 1 and one line saying what to install, no file."""
        pytest.importorskip(
            "pydot", reason="needs pydot: pip install -e '.[test]', or run tests/run"
        )
        monkeypatch.setenv("PATH", str(tmp_path))
        out = tmp_path / "chart.png"
        assert main(["diagram", "--output", str(out)]) == 1
        err = capsys.readouterr().err
        assert err == (
            "powercast: diagram: an image needs Graphviz's dot program, not found in PATH"
            " (apt install graphviz)\n"
        )
        assert not out.exists()

    @pytest.mark.unit
    def test_without_pydot_one_line_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """pydot not installed: exit 1 and one line naming the extra to install."""
        monkeypatch.setitem(sys.modules, "pydot", None)  # import pydot now fails
        for name in [m for m in sys.modules if m.startswith("statemachine.contrib.diagram.")]:
            if "renderers.dot" in name:
                monkeypatch.delitem(sys.modules, name)
        assert main(["diagram", "--output", str(tmp_path / "chart.svg")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "pip install 'powercast[diagram]'" in err

    @pytest.mark.unit
    def test_other_suffix_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--output with neither .png nor .svg: one line saying what is expected."""
        assert main(["diagram", "--output", str(tmp_path / "chart.pdf")]) == 1
        assert "expected a .png or .svg file name, got '.pdf'" in capsys.readouterr().err
