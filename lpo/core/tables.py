"""One Markdown table writer for every table lpo renders (leaderboards, compare, bench report)."""

from __future__ import annotations

from typing import Any, Sequence


def markdown_cell(value: Any) -> str:
    """A value as one table cell: pipes escaped, line breaks folded (either would break the row)."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], right_from: int | None = None) -> list[str]:
    """The lines of a GitHub Markdown table; columns from index ``right_from`` on are right-aligned (numbers)."""
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(markdown_cell(c) for c in cells) + " |"

    rule = "|" + "|".join("---:" if right_from is not None and i >= right_from else "---" for i in range(len(header))) + "|"
    return [line(header), rule, *(line(row) for row in rows)]
