"""What a plotted report is on disk: a PNG drawn by matplotlib's Agg backend and an HTML page beside it.

Agg through `Figure` and `FigureCanvasAgg` directly, not pyplot: pyplot keeps
global figures and picks a GUI backend from the environment, which a CLI on a
server without a display (or a test) must never do. The HTML page shows the
picture with the numbers it was drawn from, so the page alone is the report a
user can send or archive. The bench, compression and load-test reports all
draw through here.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from inferd.errors import InferdError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def check_target(png: Path) -> None:
    """Refuse, before any work is done, a file the plot cannot be written to, or a missing matplotlib."""
    if png.suffix.lower() != ".png":
        raise InferdError(f"--plot {png}: the plot is a PNG image; give a file name ending in .png")
    if png.exists() and png.is_dir():
        raise InferdError(f"--plot {png} is a directory; give a file name ending in .png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InferdError("plots need matplotlib: pip install 'inferd[plots]'") from None


def figure(width: float, height: float, columns: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure on the Agg canvas, with `columns` axes side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, columns, squeeze=False)[0]
    return fig, list(axes)


def write(fig: Figure, png: Path, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]],
          notes: Sequence[str] = (), page: Path | None = None) -> Path:
    """Save `fig` as `png` and an HTML page (`page`, else the same name with .html) showing it above a table of
    `rows`; the picture is embedded, so the page alone is the whole report wherever it is kept."""
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    page = page or png.with_suffix(".html")
    page.parent.mkdir(parents=True, exist_ok=True)
    image = base64.b64encode(png.read_bytes()).decode()
    cells = "\n".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    page.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}} td:first-child{{text-align:left}}
img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1>
<img src="data:image/png;base64,{image}" alt="{html.escape(title)}">
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in headers)}</tr>
{cells}
</table>
{"".join(f"<p>{html.escape(note)}</p>" for note in notes)}
</body></html>
""", encoding="utf-8")
    return page
