"""``powercast diagram``: the fan policy's state chart, drawn from the real class.

With a controller's config, the Mermaid text also notes each zone's stages beside
``shedding``: the levels its fans go through as the battery drains.

The Mermaid text needs nothing beyond python-statemachine; an image (PNG or SVG) needs
pydot (``pip install 'powercast[diagram]'``) and Graphviz's ``dot`` program. Whatever is
missing is one :class:`DiagramError` naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from statemachine.contrib.diagram import GraphvizError, GraphvizNotFoundError, formatter
from statemachine.contrib.diagram.graphviz import run_graphviz

from powercast import staging
from powercast.config import ControllerConfig
from powercast.errors import PowercastError
from powercast.policy import FanChart

IMAGE_FORMATS: Final = ("png", "svg")


class DiagramError(PowercastError):
    """The diagram cannot be made here; ``str()`` says what is missing."""


def mermaid(config: ControllerConfig | None = None) -> str:
    """The chart as Mermaid ``stateDiagram-v2`` text; with ``config``, a note of each
    zone's stages on ``shedding``."""
    text: str = formatter.render(FanChart, "mermaid")
    if config is None:
        return text
    lines = [f"        {line}" for line in stage_lines(config)]
    return text + "\n".join(["    note right of shedding", *lines, "    end note", ""])


def stage_lines(config: ControllerConfig) -> list[str]:
    """Each zone's levels in shedding, in words: "hall: 100 % > 50 % runtime < 600 s ..."."""
    out = []
    for zone in config.effective_zones():
        settings = config.policy_for(zone)
        if not settings.stages:
            out.append(f"{zone.name}: fans off (0 %)")
            continue
        steps = [f"{s.level} % at {_plain(staging.describe(s))}" for s in settings.stages]
        back = (
            f", full again once {settings.min_return_runtime_s:g} s of runtime are back"
            if settings.min_return_runtime_s is not None
            else ""
        )
        out.append(f"{zone.name}: 100 %, then {', then '.join(steps)}{back}")
    return out


def _plain(words: str) -> str:
    """Comparisons in words: Mermaid takes ``<`` as markup."""
    return words.replace(" < ", " under ").replace(" >= ", " from ")


def image(fmt: str) -> bytes:
    """The chart as an image in ``fmt`` (png or svg), rendered by Graphviz."""
    if fmt not in IMAGE_FORMATS:
        raise DiagramError(f"expected an image format of {', '.join(IMAGE_FORMATS)}, got {fmt!r}")
    try:
        source = formatter.render(FanChart, "dot")
    except ModuleNotFoundError as err:
        if err.name != "pydot":
            raise
        raise DiagramError(
            "an image needs pydot: pip install 'powercast[diagram]'"
            " (the Mermaid text needs nothing: powercast diagram)"
        ) from None
    try:
        return run_graphviz(source, fmt)
    except GraphvizNotFoundError:
        raise DiagramError(
            "an image needs Graphviz's dot program, not found in PATH (apt install graphviz)"
        ) from None
    except GraphvizError as err:
        raise DiagramError(f"dot failed: {str(err).splitlines()[0]}") from None


def write_image(path: Path) -> None:
    """Write the chart to ``path``, in the format its suffix names (.png or .svg)."""
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in IMAGE_FORMATS:
        raise DiagramError(
            f"{path}: expected a .png or .svg file name, got {path.suffix or 'no suffix'!r}"
            " (without --output the Mermaid text goes to stdout)"
        )
    data = image(fmt)
    try:
        path.write_bytes(data)
    except OSError as err:
        raise DiagramError(f"{path}: cannot write: {err.strerror or err}") from None
