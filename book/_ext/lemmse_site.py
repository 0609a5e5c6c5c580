"""Sphinx extension of the lemmse website: page-level fixes of what the toolchain emits.

- Each script of a page is included once. sphinx-thebe adds its configuration script
  (``const THEBE_JS_URL = ...``) each time Sphinx reads the sources, so that pages carried it
  twice and the second copy raised "Identifier 'THEBE_JS_URL' has already been declared" in the
  browser console (issue 15, item 9).
- Every image has a text alternative: a figure's caption, else a description of where the image
  comes from. Without it the HTML writer used the image's hashed file name as its ``alt``.
- Captions are written in the body text colour (``static/lemmse.css``): the theme's muted grey
  clashed with the black math inside them.
- Search result snippets show math as text, not as TeX source (``static/lemmse_search.js``).
- The index of theorems, definitions and other statements (``prf-prf.html``) lists each by its
  title, grouped by kind and naming its chapter (sphinx-proof listed raw labels such as
  ``thm-lemmse``), and it is linked under the table of contents (``templates/lemmse-indices.html``).
- The widget manager's icon fonts (vendored by ``scripts/vendor_js.sh``) are copied to where its
  style sheet requests them, ``@jupyter-widgets/html-manager/dist/`` beside each widget page
  (they were three 404s on each widget page).
- The theme's colour mode defaults to ``auto`` (unset, the theme logged a console error).
- The themes' JavaScript and CSS source maps (about 3.4 MiB, useful only to debug the themes) are
  not copied to the site, and the references to them are removed from the files that named them.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from docutils import nodes

STATIC = Path(__file__).with_name("static")
TEMPLATES = Path(__file__).with_name("templates")
#: The sidebar of sphinx-book-theme, followed by the links to the indices.
SIDEBAR = ["navbar-logo.html", "icon-links.html", "search-button-field.html", "sbt-sidebar-nav.html",
           "lemmse-indices.html"]
#: Longest alt text taken from a caption (screen readers read it whole).
ALT_CHARS = 240
# a source-map comment alone on its line (the same text inside a string literal is code: kept)
_SOURCE_MAP = re.compile(
    rb"^[ \t]*(//# sourceMappingURL=[^\s]+|/\*# sourceMappingURL=[^\s*]+\s*\*/)[ \t]*$", re.M)


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


def alt_text(image: nodes.image) -> str:
    """The text alternative of ``image``: its figure's caption, shortened, or what made it."""
    parent = image.parent
    while parent is not None and not isinstance(parent, nodes.figure):
        parent = parent.parent
    if parent is not None:
        for caption in parent.findall(nodes.caption):
            text = " ".join(caption.astext().split())
            if text:
                if len(text) > ALT_CHARS:
                    text = text[: ALT_CHARS - 1].rsplit(" ", 1)[0] + "…"
                return text
    return "Figure drawn by the code cell above"


def _set_alt(app, doctree, docname):
    for image in doctree.findall(nodes.image):
        uri = image.get("uri", "")
        alt = image.get("alt", "")
        if not alt or Path(alt).name == Path(uri).name:
            image["alt"] = alt_text(image)


def strip_source_maps(static: Path) -> int:
    """Delete ``*.map`` files under ``static`` and the comments that point to them; bytes saved."""
    saved = 0
    for path in static.rglob("*.map"):
        saved += path.stat().st_size
        path.unlink()
    for path in list(static.rglob("*.js")) + list(static.rglob("*.css")):
        data = path.read_bytes()
        if b"sourceMappingURL=" in data:
            new = _SOURCE_MAP.sub(b"", data)
            if new != data:
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_bytes(new)
                tmp.replace(path)
    return saved


_GREEK = {name: chr(code) for name, code in (
    ("alpha", 0x3B1), ("beta", 0x3B2), ("gamma", 0x3B3), ("delta", 0x3B4), ("epsilon", 0x3B5),
    ("lambda", 0x3BB), ("mu", 0x3BC), ("pi", 0x3C0), ("sigma", 0x3C3), ("tau", 0x3C4),
    ("phi", 0x3C6), ("Sigma", 0x3A3), ("infty", 0x221E), ("to", 0x2192), ("times", 0xD7))}


def plain_title(title: str) -> str:
    """A statement's title as plain text: ``"(Limits in $\\sigma$)"`` -> ``"Limits in σ"``."""
    text = " ".join(title.split())
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]

    def math(match):
        tex = re.sub(r"\\([A-Za-z]+)", lambda m: _GREEK.get(m.group(1), ""), match.group(1))
        return re.sub(r"[{}^_\\]", "", tex)

    return re.sub(r"\$([^$]*)\$", math, text).strip()


def _collect_statements(app, doctree):
    env = app.env
    found = env.__dict__.setdefault("lemmse_statements", {})
    for node in doctree.findall(nodes.Element):
        if "proof" in node.get("classes", ()) and node.get("label") and node.get("realtype"):
            title = plain_title(str(node.get("title", "")))
            found[node["label"]] = {"docname": env.docname, "realtype": node["realtype"], "title": title}


def _purge_statements(app, env, docname):
    found = getattr(env, "lemmse_statements", {})
    for label in [k for k, v in found.items() if v["docname"] == docname]:
        del found[label]


def _merge_statements(app, env, docnames, other):
    env.__dict__.setdefault("lemmse_statements", {}).update(
        {k: v for k, v in getattr(other, "lemmse_statements", {}).items() if v["docname"] in docnames})


def statement_entries(statements: dict, chapter_titles: dict) -> list:
    """The index content: ``[(kind, [IndexEntry ...]), ...]``, kinds in alphabetical order."""
    from sphinx.domains import IndexEntry

    groups: dict[str, list] = {}
    for label, item in statements.items():
        kind = item["realtype"].capitalize()
        chapter = chapter_titles.get(item["docname"], "")
        name = item["title"] or f"{kind} in {chapter}".strip()
        groups.setdefault(kind + "s", []).append(
            IndexEntry(name, 0, item["docname"], label, chapter, "", ""))
    return [(kind, sorted(entries, key=lambda e: (e.docname, e.name.lower())))
            for kind, entries in sorted(groups.items())]


def _proof_index_class():
    from sphinx_proof.domain import ProofIndex

    class StatementIndex(ProofIndex):
        """sphinx-proof's index (same page, ``prf-prf.html``), listing titles instead of labels."""

        localname = "Theorems, definitions and other statements"
        shortname = "Statements"

        def generate(self, docnames=None):
            env = self.domain.env
            titles = {doc: node.astext() for doc, node in env.titles.items()}
            statements = {k: v for k, v in getattr(env, "lemmse_statements", {}).items()
                          if docnames is None or v["docname"] in docnames}
            return statement_entries(statements, titles), False

    return StatementIndex


#: Where the widget manager's style sheet looks for its icon fonts, relative to the page.
WIDGET_FONTS = Path("@jupyter-widgets") / "html-manager" / "dist"


def place_widget_fonts(outdir: Path) -> None:
    """Copy the vendored icon fonts (``_static/widgets/fonts``) to ``WIDGET_FONTS`` beside
    every page that embeds widgets, where the widget manager requests them."""
    fonts = sorted((outdir / "_static" / "widgets" / "fonts").glob("*.woff2"))
    if not fonts:
        return
    folders = {page.parent for page in outdir.rglob("*.html")
               if "application/vnd.jupyter.widget-state+json" in page.read_text(errors="ignore")}
    for folder in sorted(folders):
        dest = folder / WIDGET_FONTS
        dest.mkdir(parents=True, exist_ok=True)
        for font in fonts:
            shutil.copyfile(font, dest / font.name)


def _finish(app, exception):
    if exception is None and app.builder.format == "html":
        strip_source_maps(Path(app.outdir) / "_static")
        place_widget_fonts(Path(app.outdir))


def _add_static(app, config):
    config.html_static_path = [*config.html_static_path, str(STATIC)]
    # the theme's colour mode when the reader has chosen none: with none set, the theme's script
    # logged "Got invalid theme mode" to the console on every first visit
    config.html_context = {"default_mode": "auto", **(config.html_context or {})}
    config.templates_path = [*config.templates_path, str(TEMPLATES)]
    if not config.html_sidebars:
        config.html_sidebars = {"**": SIDEBAR}
    try:
        from sphinx_proof.domain import ProofDomain
    except ImportError:  # no sphinx-proof: nothing to re-index
        return
    ProofDomain.indices = [_proof_index_class()]


def setup(app):
    app.connect("config-inited", _add_static)
    app.add_css_file("lemmse.css")
    app.add_js_file("lemmse_search.js")
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    app.connect("doctree-resolved", _set_alt)
    app.connect("build-finished", _finish)
    app.connect("doctree-read", _collect_statements)
    app.connect("env-purge-doc", _purge_statements)
    app.connect("env-merge-info", _merge_statements)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
