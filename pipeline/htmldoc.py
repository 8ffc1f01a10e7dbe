"""Self-contained HTML from medpipe's Markdown reports: tables rendered, images embedded, nothing fetched.

The page carries a Content-Security-Policy that allows no network source at all (images only as data:
URIs, styles inline), so it reads the same offline, in a mail attachment and in MLflow's artifact viewer.
"""

import base64
import html
import re
from pathlib import Path

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
MAX_IMAGE_BYTES = 8 * 1024 * 1024  # an embedded figure above this is left as a link: the page stays small
_CSS = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:60em;padding:0 1em;"
    "color:#1f2328;line-height:1.45}table{border-collapse:collapse;margin:.6em 0}"
    "td,th{border:1px solid #d0d7de;padding:.25em .6em;text-align:left}th{background:#f6f8fa}"
    "img{max-width:100%;height:auto;margin:.3em .3em .3em 0;vertical-align:top}"
    "h1{border-bottom:1px solid #d0d7de;padding-bottom:.2em}code{background:#f6f8fa;padding:0 .2em}"
)
_SRC = re.compile(r'<img src="([^"]*)"')


def data_uri(folder: Path, src: str) -> str | None:
    """A PNG or JPEG under `folder` named by a relative link, as a data: URI (None: not one)."""
    path = (folder / html.unescape(src)).resolve()
    kind = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}.get(path.suffix.lower())
    if kind is None or not path.is_relative_to(folder.resolve()) or not path.is_file():
        return None
    if path.stat().st_size > MAX_IMAGE_BYTES:
        return None
    return f"data:image/{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def markdown_html(markdown: str, folder: Path, title: str) -> str:
    """Render Markdown to one self-contained HTML page.

    Args:
        markdown: The Markdown text (CommonMark with tables).
        folder: Where its relative image links point; each PNG/JPEG inside it is embedded.
        title: The page title.

    Returns:
        The HTML page.
    """
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    body = _SRC.sub(lambda m: f'<img src="{data_uri(folder, m.group(1)) or m.group(1)}"', body)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}</body></html>\n"
    )
