"""The bench report's document: Markdown and HTML written in step, and small shared readers."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Sequence

from lpo.core.tables import markdown_table
from lpo.evals.leaderboard import html_text

REPORT_DIR = "report"  # the report's folder inside a bench


class ReportDoc:
    """The report built twice in step: Markdown lines and HTML parts."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, level: int, text: str) -> None:
        self.md += [f"{'#' * level} {text}", ""]
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str, css: str | None = None) -> None:
        self.md += [text if css != "skip" else f"_{text}_", ""]
        cls = f" class='{css}'" if css else ""
        self.html.append(f"<p{cls}>{html.escape(text)}</p>")

    def skip(self, text: str) -> None:
        self.para(f"skipped: {text}", "skip")

    def bullets(self, items: Sequence[str], css: str | None = "note") -> None:
        if not items:
            return
        self.md += [f"- {i}" for i in items] + [""]
        cls = f" class='{css}'" if css else ""
        self.html.append(f"<ul{cls}>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")

    def table(self, header: list[str], rows: list[list[str]], css: str | None = None) -> None:
        self.md += markdown_table(header, rows) + [""]
        head = "".join(f"<th>{html_text(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html_text(c)}</td>" for c in row) + "</tr>" for row in rows)
        cls = f" class='wide {css}'" if css else " class='wide'"
        self.html.append(f"<div{cls}><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")

    def image(self, png: bytes, alt: str, md_link: str | None) -> None:
        if md_link:
            self.md += [f"![{alt}]({md_link})", ""]
        self.html.append(f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")

    def code(self, text: str, lang: str = "") -> None:
        self.md += [f"```{lang}", text, "```", ""]
        self.html.append(f"<pre>{html.escape(text)}</pre>")


def read_json_noted(path: Path, notes: list[str]) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        notes.append(f"could not read {path} ({type(err).__name__}: {err}); left out")
        return None


def fmt_interval(mean: Any, se: Any, signed: bool = False) -> str:
    if mean is None:
        return "—"
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return text if se is None or se != se else f"{text} ± {se:.3f}"
