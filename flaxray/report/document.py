"""A report's text: `Document`, headings, paragraphs, tables and images rendered once as markdown and once
as self-contained HTML (images embedded as base64, so one file can be mailed). Every report of flaxray is
built as a `Document`; numbers become text in `flaxray.analysis.text`."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import numpy as np


class Document:
    """Headings, paragraphs, tables and images, rendered as markdown or as self-contained HTML."""

    def __init__(self):
        self.blocks: list[tuple] = []

    def heading(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def para(self, text: str):
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]):
        self.blocks.append(("table", header, rows))

    def image(self, path: Path, alt: str):
        self.blocks.append(("img", Path(path), alt))

    def markdown(self) -> str:
        out = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append(f"{'#' * block[1]} {block[2]}")
            elif kind == "p":
                out.append(block[1])
            elif kind == "table":
                out += [_md_row(block[1]), "|" + "---|" * len(block[1])] + [_md_row(r) for r in block[2]]
            else:
                out.append(f"![{block[2]}]({block[1].name})")
            out.append("")
        return "\n".join(out)

    def html(self, title: str) -> str:
        body = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                body.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "table":
                head = "".join(f"<th>{_inline(c)}</th>" for c in block[1])
                rows = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>" for r in block[2])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            else:
                data = base64.b64encode(block[1].read_bytes()).decode("ascii")
                body.append(f'<p><img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}"></p>')
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
                f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _md_row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;line-height:1.45}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}"
        "tr:nth-child(even) td{background:#fafafa}img{max-width:100%}"
        "code{background:#f3f3f3;padding:0 3px;border-radius:3px}")


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` as HTML, everything else escaped."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)
