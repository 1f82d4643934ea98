"""The evaluation report as one self-contained HTML file: ``report.py``'s sections, plots inline.

One file a risk team can mail or attach to a change ticket: no folder of PNGs to keep beside it,
no scripts, no network. Tables come from the same ``Report.sections()`` as the Markdown and JSON.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from riskengine.lab.report import Report

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f2f2f2; }
p.guide { color: #555; font-style: italic; margin: 0.2em 0; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
"""


def _cell(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        return "-" if np.isnan(value) else f"{value:.4f}"
    return html.escape(str(value))


def html_table(df: pd.DataFrame, key: str) -> str:
    """A table with the index as its first column; ``key`` becomes its id (``table-<key>``)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [df.index.name or ""] + list(df.columns))
    body = "".join("<tr>" + f"<th>{html.escape(str(index))}</th>" + "".join(f"<td>{_cell(v)}</td>" for v in row)
                   + "</tr>" for index, row in zip(df.index, df.itertuples(index=False)))
    return f'<table id="table-{key}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render_html(report: "Report", plots_dir: str | Path) -> str:
    """The whole report as HTML, reading the PNGs ``report.plot`` wrote into ``plots_dir``."""
    from riskengine.lab.report import FIGURES

    folder = Path(plots_dir)
    model = report.model_version or report.main
    lines = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(report.title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(report.title)}</h1>",
             f'<p id="subject">model <strong>{html.escape(model)}</strong>'
             + (f", data <strong>{html.escape(report.data_name)}</strong>" if report.data_name else "")
             + f": {report.y.size:,} events, {int(report.y.sum()):,} attacks</p>"]
    if report.notes:
        lines.append("<ul>" + "".join(f"<li>{html.escape(note)}</li>" for note in report.notes) + "</ul>")
    for part in report.sections():
        lines += [f'<h2 id="{part.key}">{html.escape(part.heading)}</h2>',
                  f'<p class="guide">{html.escape(part.guide)}</p>', html_table(part.table, part.key)]
        lines += [_image(folder / f"{name}.png", f"{FIGURES[name]}: {report.subject}")
                  for name in part.figures if (folder / f"{name}.png").exists()]
    lines.append("</body></html>")
    return "\n".join(lines)
