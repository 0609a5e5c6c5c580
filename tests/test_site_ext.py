"""Tests of the website extension book/_ext/lemmse_site.py (issue 15 item 9): alternative texts
from captions, source maps left out of the site, the caption style sheet registered."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

docutils = pytest.importorskip("docutils")
from docutils import nodes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("lemmse_site", ROOT / "book" / "_ext" / "lemmse_site.py")
site = importlib.util.module_from_spec(spec)
spec.loader.exec_module(site)


def _figure(alt, caption="Fig. text: the LE-MMSE at σ = 0.2."):
    image = nodes.image(uri="_images/0a1b2c.png", alt=alt) if alt is not None else nodes.image(uri="x.png")
    figure = nodes.figure("", image)
    if caption:
        figure += nodes.caption("", caption)
    return figure, image


def test_captioned_images_get_their_caption_as_alt_text():
    doc = nodes.document(None, None)
    hashed, img1 = _figure("../_build/jupyter_execute/0a1b2c3d4e.png")
    missing, img2 = _figure(None)
    written, img3 = _figure("A hand-written description")
    bare, img4 = _figure("x.png", caption=None)
    for f in (hashed, missing, written, bare):
        doc += f
    assert site.caption_alt_texts(None, doc) == 2
    assert img1["alt"] == img2["alt"] == "Fig. text: the LE-MMSE at σ = 0.2."
    assert img3["alt"] == "A hand-written description"
    assert img4["alt"] == "x.png"  # no caption: nothing to take
    long_doc = nodes.document(None, None)
    fig, img = _figure("a.png", caption="word " * 200)
    long_doc += fig
    site.caption_alt_texts(None, long_doc)
    assert len(img["alt"]) <= site.ALT_MAX and img["alt"].endswith("…")


def test_source_maps_are_dropped_from_the_built_site(tmp_path):
    static = tmp_path / "_static" / "scripts"
    static.mkdir(parents=True)
    for name in ("theme.js", "theme.js.map", "style.css.map"):
        (static / name).write_text("x")
    app = SimpleNamespace(outdir=str(tmp_path), builder=SimpleNamespace(format="html"))
    assert site.drop_source_maps(app, RuntimeError("build failed")) == []
    removed = site.drop_source_maps(app, None)
    assert sorted(p.name for p in removed) == ["style.css.map", "theme.js.map"]
    assert [p.name for p in static.iterdir()] == ["theme.js"]


def test_caption_style_sheet_is_registered():
    calls = []
    app = SimpleNamespace(connect=lambda *a, **k: calls.append(a[0]),
                          add_css_file=lambda name: calls.append(name),
                          config=SimpleNamespace(html_static_path=["_vendor"]))
    site.setup(app)
    assert "lemmse.css" in calls and "builder-inited" in calls
    site._add_static(app)
    css = Path(app.config.html_static_path[-1]) / "lemmse.css"
    assert "figcaption" in css.read_text() and "--pst-color-text-base" in css.read_text()
