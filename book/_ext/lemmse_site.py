"""Sphinx extension of the lemmse website: page-level fixes of what the toolchain emits.

- Each script of a page is included once. sphinx-thebe adds its configuration script
  (``const THEBE_JS_URL = ...``) each time Sphinx reads the sources, so that pages carried it
  twice and the second copy raised "Identifier 'THEBE_JS_URL' has already been declared" in the
  browser console (issue 15, item 9).
"""

from __future__ import annotations


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


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
