"""Self-contained HTML pages (inline CSS, no external
resources), shared by the evaluation report and the data audit.

Reports are mailed and archived, and hospital networks are often offline, so a page carries everything
it shows. Every page opens with the research-use statement.
"""

from __future__ import annotations

import html

from covidct.intended_use import RESEARCH_USE_STATEMENT

_BASE_CSS = """
body { font-family: system-ui, sans-serif; max-width: 64rem; margin: 2rem auto; padding: 0 1rem; \
color: #222; }
.ruo { border: 3px solid #b00020; background: #fdecea; color: #b00020; font-size: 1.3rem;
       font-weight: bold; padding: 0.8rem 1rem; border-radius: 6px; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
.small { font-size: 0.9rem; color: #555; }
.warn { color: #8a4b00; }
"""


def html_page(title: str, body: str, *, extra_css: str = "") -> str:
    """A complete HTML document: ``title`` (escaped here),
    the research-use banner, then ``body`` (already HTML)."""
    escaped = html.escape(title)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escaped}</title>\n<style>{_BASE_CSS}{extra_css}</style>\n</head>\n<body>\n"
        f'<h1>{escaped}</h1>\n<p class="ruo">{html.escape(RESEARCH_USE_STATEMENT)}'
        f"</p>\n{body}\n</body>\n</html>\n"
    )
