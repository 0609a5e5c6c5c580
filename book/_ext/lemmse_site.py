"""Sphinx extension of the lemmse website: page-level fixes of what the toolchain emits.

- Each script of a page is included once. sphinx-thebe adds its configuration script
  (``const THEBE_JS_URL = ...``) each time Sphinx reads the sources, so that pages carried it
  twice and the second copy raised "Identifier 'THEBE_JS_URL' has already been declared" in the
  browser console (issue 15, item 9).
- Captions in the text colour (``static/lemmse.css``): the theme's light grey made the math
  inside them, drawn in the text colour by MathJax, stand out in black (item 9).
- A figure's image has its caption as alternative text, instead of the hashed file name that
  myst-nb writes (item 9).
- The themes' source maps (``*.js.map``, ``*.css.map``: a debugger's aid, about 3 MiB) are
  left out of the built site (item 9).
"""

from __future__ import annotations

import re
from pathlib import Path

STATIC = Path(__file__).with_name("static")
ALT_MAX = 300  # characters of caption kept as alternative text


def _key(script) -> tuple:
    attributes = getattr(script, "attributes", {}) or {}
    filename = getattr(script, "filename", script) or ""  # None and "" both mean an inline script
    return (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def _file_like(alt: str) -> bool:
    """Whether ``alt`` is empty or a file name or path rather than a description."""
    alt = (alt or "").strip()
    return not alt or bool(re.fullmatch(r"[\w./\\:-]+\.(png|jpe?g|gif|svg|webp)", alt, re.I))


def caption_alt_texts(app, doctree, docname=None) -> int:
    """Give every image of a captioned figure its caption as ``alt`` (unless it has a real one).

    Returns the number of images changed.
    """
    from docutils import nodes

    changed = 0
    for figure in doctree.findall(nodes.figure):
        captions = list(figure.findall(nodes.caption))
        if not captions:
            continue
        text = " ".join(captions[0].astext().split())
        if len(text) > ALT_MAX:
            text = text[: ALT_MAX - 1].rsplit(" ", 1)[0] + "…"
        for image in figure.findall(nodes.image):
            if _file_like(image.get("alt", "")):
                image["alt"] = text
                changed += 1
    return changed


def drop_source_maps(app, exception) -> list:
    """Delete the ``*.map`` files of the built site's ``_static`` folder; returns their paths."""
    if exception is not None or getattr(app.builder, "format", "") != "html":
        return []
    static = Path(app.outdir) / "_static"
    removed = [p for p in static.rglob("*.map") if p.is_file()] if static.is_dir() else []
    for p in removed:
        p.unlink()
    return removed


def _add_static(app):
    app.config.html_static_path.append(str(STATIC))


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    app.connect("builder-inited", _add_static)
    app.add_css_file("lemmse.css")
    app.connect("doctree-resolved", caption_alt_texts)
    app.connect("build-finished", drop_source_maps)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
