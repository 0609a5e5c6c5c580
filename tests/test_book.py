"""Tests of the book: chapters paired and executed, and the website rendering offline.

1. Every chapter ``book/NN_name.md`` with a jupytext header has its executed notebook
   ``book/NN_name.ipynb``, with the same cells (sources and cell options), and every code cell
   has been run; the table of contents lists every chapter. The website shows the outputs of the
   notebooks, so a Markdown edit that was not executed would silently not appear.
   Fix: ``scripts/execute_chapter.sh book/NN_name.md`` and commit both files.
   Figure text: every PNG a chapter shows (outputs and widget images) records the height of its
   smallest text (``lemmse.plot``); shown at most ``COLUMN_PX`` wide, it must stay at least
   ``LEGIBLE_PX`` (9 px) high (``KNOWN_FIGURE_TEXT``: chapters not re-executed since, may only
   shrink).
2. The rendering check (only where Debian's ``chromium`` is installed: ``apt-get install chromium``):
   build the website into a temporary folder, strictly (``jupyter-book build -W -n --keep-going``),
   open every page in headless Chromium and fail when math is left as raw TeX (no MathJax output),
   when a page that embeds widget state shows no rendered widget, or when raw reStructuredText
   (an autodoc directive that was not parsed) shows as text.

3. The layout check (same condition): every built page opened at 1280 px and at 390 px wide with
   a measuring script injected (``tests/layout_probe.js``); it fails on display math wider than
   its space beside the equation number at 1280 px, display math that overflows without
   scrolling at any width, a figure in a cell output without a caption, a file that fails to
   load, and, against the counts recorded in ``KNOWN_LAYOUT`` (defects not fixed yet, which may
   only shrink), code cells and outputs wider than the column at 1280 px, console errors and
   fonts that fail to load.

The detectors of 2. and 3. are also tested on small hand-written pages, so that they can be seen
to fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
FIX = "run `scripts/execute_chapter.sh {md}` and commit both files"

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")


# ---------------------------------------------------------------------------------------------
# 1. paired chapters
# ---------------------------------------------------------------------------------------------


def paired_chapters() -> list[Path]:
    """book/NN_*.md files whose jupytext header pairs them with a notebook."""
    out = []
    for md in sorted(BOOK.glob("[0-9][0-9]_*.md")):
        formats = jupytext.read(md).metadata.get("jupytext", {}).get("formats", "")
        if "ipynb" in formats:
            out.append(md)
    return out


# Cell options written in the Markdown (tags, mystnb figure captions...) travel as cell metadata;
# these keys are added by execution or by Jupyter front ends and are not part of the text.
_VOLATILE_METADATA = {"execution", "ExecuteTime", "collapsed", "scrolled", "jupyter", "trusted"}


def _cells(nb) -> list[tuple[str, str, dict]]:
    return [
        (
            cell.cell_type,
            cell.source.rstrip(),
            {k: v for k, v in cell.metadata.items() if k not in _VOLATILE_METADATA},
        )
        for cell in nb.cells
    ]


def test_book_has_chapters():
    assert paired_chapters(), "no paired chapter book/NN_name.md found"


@pytest.mark.parametrize("md", paired_chapters(), ids=lambda p: p.name)
def test_chapter_pair_in_sync(md: Path):
    rel = md.relative_to(ROOT)
    nb_path = md.with_suffix(".ipynb")
    assert nb_path.exists(), f"{rel}: notebook {nb_path.name} is missing; {FIX.format(md=rel)}"
    text_nb = jupytext.read(md)
    run_nb = nbformat.read(nb_path, as_version=4)
    a, b = _cells(text_nb), _cells(run_nb)
    if a != b:
        where = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        detail = (
            f"{len(a)} cells in the .md, {len(b)} in the .ipynb"
            if len(a) != len(b) and where == min(len(a), len(b))
            else f"cell {where} differs: {a[where][1][:80]!r} in the .md vs {b[where][1][:80]!r} in the .ipynb"
        )
        pytest.fail(f"{rel} and {nb_path.name} are out of sync ({detail}); {FIX.format(md=rel)}")


@pytest.mark.parametrize("md", paired_chapters(), ids=lambda p: p.name)
def test_chapter_executed(md: Path):
    rel = md.relative_to(ROOT)
    nb_path = md.with_suffix(".ipynb")
    if not nb_path.exists():
        pytest.skip("notebook missing (reported by test_chapter_pair_in_sync)")
    run_nb = nbformat.read(nb_path, as_version=4)
    code = [c for c in run_nb.cells if c.cell_type == "code" and c.source.strip()]
    not_run = [i for i, c in enumerate(code) if c.get("execution_count") is None]
    assert not not_run, f"{nb_path.name}: code cells {not_run} were never executed; {FIX.format(md=rel)}"
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{nb_path.name}: cells were not executed once, top to bottom (execution counts {counts}); "
        f"{FIX.format(md=rel)}"
    )
    errors = [c.execution_count for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{nb_path.name}: cells {errors} stored an error; {FIX.format(md=rel)}"


def test_toc_lists_every_chapter():
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r"file:\s*(book/[^\s#]+)", toc))
    missing = [md.relative_to(ROOT).with_suffix("").as_posix() for md in paired_chapters()]
    missing = [name for name in missing if name not in listed]
    assert not missing, f"chapters not in _toc.yml (the website would skip them): {missing}"


# Figure text as displayed (issue 15 item 3). The chapters' PNGs record the height of their
# smallest text (``lemmse:smallest-text-px``, written by ``lemmse.plot`` for inline figures and
# widget panels); the page shows a PNG at its pixel size, shrunk to the text column when wider.
# A page may only get better: per chapter, the figures that record nothing (executed before the
# record existed, or drawn outside matplotlib) and the figures whose text is below LEGIBLE_PX.
KNOWN_FIGURE_TEXT: dict = {}


def figure_pngs(nb) -> list[tuple[str, bytes]]:
    """``(where, PNG bytes)`` of every image a notebook shows: cell outputs and widget images."""
    import base64

    out = []
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            data = output.get("data", {}).get("image/png")
            if data:
                out.append((f"cell {i}", base64.b64decode(data)))
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    for model_id, model in state.get("state", {}).items():
        st = model.get("state", {})
        if model.get("model_name") == "ImageModel" and st.get("format") == "png":
            value = st.get("value")
            raw = base64.b64decode(value) if isinstance(value, str) else None
            buffers = [b for b in model.get("buffers", []) if b.get("path") == ["value"]]
            if buffers:
                raw = base64.b64decode(buffers[0]["data"])
            if raw:
                out.append((f"widget image {model_id[:8]}", raw))
    return out


def figure_text_problems(pngs, known: tuple = (0, 0)) -> tuple[list[str], tuple[int, int]]:
    """Figures whose smallest text is below LEGIBLE_PX as displayed at 1280 px, and the counts
    ``(figures recording no text size, illegible figures)`` checked against ``known``."""
    from lemmse.plot import COLUMN_PX, LEGIBLE_PX, png_text_size

    unmeasured, illegible = [], []
    for where, png in pngs:
        record = png_text_size(png)
        if record is None:
            unmeasured.append(where)
            continue
        small, width = record
        shown = small * min(1.0, COLUMN_PX / width)
        if shown < LEGIBLE_PX:
            illegible.append(f"{where}: smallest text {shown:.1f} px as displayed ({small:.1f} px "
                             f"in a {width} px wide PNG shown {min(width, COLUMN_PX)} px wide)")
    counts = (len(unmeasured), len(illegible))
    problems = []
    if counts[0] > known[0]:
        problems.append(f"{counts[0]} figures record no text size (known: {known[0]}), e.g. "
                        f"{unmeasured[0]}: draw them with matplotlib after importing lemmse.plot "
                        f"and re-execute the chapter")
    if counts[1] > known[1]:
        problems.append(f"{counts[1]} figures with text below {LEGIBLE_PX:g} px as displayed "
                        f"(known: {known[1]}): " + "; ".join(illegible))
    return problems, counts


def test_figure_text_problems_detects_small_text():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lemmse.plot import figure_png

    def png(width_in, dpi, labelsize):
        fig, ax = plt.subplots(figsize=(width_in, 3))
        ax.plot([0, 1])
        ax.tick_params(labelsize=labelsize)
        return figure_png(fig, dpi)

    fits = png(6, 100, 8)  # 600 px wide, 11.1 px text
    shrunk = png(12, 100, 8)  # 1200 px shown 688 px wide: 6.4 px text
    small = png(6, 72, 8)  # 8 px text
    assert figure_text_problems([("a", fits)]) == ([], (0, 0))
    problems, counts = figure_text_problems([("a", fits), ("b", shrunk), ("c", small)])
    assert counts == (0, 2) and "b: smallest text 6.4 px as displayed" in problems[0]
    assert "c: smallest text 8.0 px" in problems[0]
    assert figure_text_problems([("b", shrunk)], known=(0, 1))[0] == []
    import io

    buf = io.BytesIO()
    plt.figure().savefig(buf, format="png")  # plain matplotlib: records nothing
    unrecorded = buf.getvalue()
    problems, counts = figure_text_problems([("d", unrecorded)])
    assert counts == (1, 0) and "record no text size" in problems[0]


@pytest.mark.parametrize("md", paired_chapters(), ids=lambda p: p.name)
def test_figure_text_legible(md: Path):
    nb_path = md.with_suffix(".ipynb")
    if not nb_path.exists():
        pytest.skip("notebook missing (reported by test_chapter_pair_in_sync)")
    known = KNOWN_FIGURE_TEXT.get(md.stem, (0, 0))
    problems, counts = figure_text_problems(figure_pngs(nbformat.read(nb_path, as_version=4)), known)
    assert not problems, f"{nb_path.name}: " + "; ".join(problems)
    if counts < known:
        print(f"KNOWN_FIGURE_TEXT[{md.stem!r}] can be lowered to {counts}")


# ---------------------------------------------------------------------------------------------
# 2. rendering check
# ---------------------------------------------------------------------------------------------

# Text that a reader should never see: TeX delimiters that MathJax did not typeset, and raw
# reStructuredText from an autodoc directive that was parsed as Markdown.
RAW_TEX = re.compile(r"\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{")
RAW_REST = re.compile(r"(?:^|\s)\.\. (?:py:|auto)\w*::|:param \w+:")

# Elements whose text is not prose: code, scripts, and MathJax's own output.
_SKIP = {"script", "style", "pre", "code", "textarea", "noscript", "template", "svg", "math", "mjx-container"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _PageScan(HTMLParser):
    """Collect the visible prose text and count the elements the checks need."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.skip_depth = 0
        self.text: list[str] = []
        self.mathjax = 0  # <mjx-container>: math typeset by MathJax
        self.math_spans = 0  # elements with class "math": math that MathJax must typeset
        self.widget_views = 0  # <script type="application/vnd.jupyter.widget-view+json">
        self.widget_state = 0  # <script type="application/vnd.jupyter.widget-state+json">
        self.widgets = 0  # elements with class "jupyter-widgets": widgets rendered by the manager

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "mjx-container":
            self.mathjax += 1
        if "math" in classes:
            self.math_spans += 1
        if "jupyter-widgets" in classes:
            self.widgets += 1
        if tag == "script":
            kind = attrs.get("type") or ""
            self.widget_views += kind == "application/vnd.jupyter.widget-view+json"
            self.widget_state += kind == "application/vnd.jupyter.widget-state+json"
        if tag in _VOID:
            return
        self.stack.append(tag)
        if tag in _SKIP or self.skip_depth:
            self.skip_depth += 1

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in _VOID and self.stack and self.stack[-1] == tag:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in _VOID or tag not in self.stack:
            return
        while self.stack:
            top = self.stack.pop()
            if self.skip_depth:
                self.skip_depth -= 1
            if top == tag:
                break

    def handle_data(self, data):
        if not self.skip_depth:
            self.text.append(data)


def page_problems(dom: str) -> list[str]:
    """What is wrong with a page after the browser ran its scripts (empty list: it renders).

    Parameters
    ----------
    dom : str
        The page's DOM serialised after rendering (``chromium --dump-dom``).
    """
    scan = _PageScan()
    scan.feed(dom)
    scan.close()
    text = "".join(scan.text)
    problems = []
    raw = sorted({m.group(0) for m in RAW_TEX.finditer(text)})
    if raw:
        i = RAW_TEX.search(text).start()
        context = " ".join(text[max(0, i - 60) : i + 60].split())
        problems.append(f"raw TeX {raw} left in the text (MathJax did not typeset it), near: {context!r}")
    if scan.math_spans and not scan.mathjax:
        problems.append(f"{scan.math_spans} math elements but no MathJax output (<mjx-container>)")
    if (scan.widget_state or scan.widget_views) and scan.widgets < max(1, scan.widget_views):
        problems.append(
            f"the page embeds widget state ({scan.widget_views} widget views) but shows "
            f"{scan.widgets} rendered widgets (.jupyter-widgets)"
        )
    rest = RAW_REST.search(text)
    if rest:
        problems.append(f"raw reStructuredText shown as text: {rest.group(0).strip()!r} (use an eval-rst block)")
    return problems


def test_page_problems_detects_raw_tex():
    page = '<html><body><p>Let <span class="math">\\(x^2\\)</span> be</p><div class="math">$$y$$</div></body></html>'
    problems = page_problems(page)
    assert any("raw TeX" in p for p in problems)
    assert any("no MathJax output" in p for p in problems)


def test_page_problems_accepts_typeset_math_and_code():
    page = (
        '<html><body><p>Let <span class="math"><mjx-container class="MathJax">'
        "<mjx-assistive-mml><math><mi>x</mi></math></mjx-assistive-mml></mjx-container></span> be.</p>"
        "<pre>echo $$ \\(not math\\)</pre><p>Costs <code>$$</code> nothing.</p><br><img src=a.png></body></html>"
    )
    assert page_problems(page) == []


def test_page_problems_detects_missing_widgets():
    state = '<script type="application/vnd.jupyter.widget-state+json">{"state": {}}</script>'
    view = '<script type="application/vnd.jupyter.widget-view+json">{"model_id": "a"}</script>'
    empty = f"<html><body>{state}<div>{view}</div></body></html>"
    assert any("widget" in p for p in page_problems(empty))
    rendered = (
        f"<html><body>{state}<div>{view}<div class=\"lm-Widget jupyter-widgets widget-slider\">"
        '<div class="widget-label">sigma</div></div></div></body></html>'
    )
    assert page_problems(rendered) == []


def test_page_problems_detects_raw_rest():
    page = "<html><body><p>.. py:function:: f(x)</p><p>:param x: the input</p></body></html>"
    assert any("reStructuredText" in p for p in page_problems(page))


def _chromium() -> str | None:
    for name in (os.environ.get("LEMMSE_CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _dump_dom(chromium: str, page: Path | str) -> str:
    """The DOM of ``page`` (a file, or a URL string) after its scripts ran."""
    url = page if isinstance(page, str) else page.as_uri()
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    if proc.returncode != 0 or "</html>" not in proc.stdout:
        raise RuntimeError(f"chromium failed on {url} (rc {proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    """The website built from the working tree into a temporary folder (strict build)."""
    if _chromium() is None:
        pytest.skip("rendering check skipped: Chromium not installed (Debian: apt-get install chromium)")
    vendor = subprocess.run(["bash", str(ROOT / "scripts" / "vendor_js.sh")], cwd=ROOT, capture_output=True, text=True)
    if vendor.returncode != 0:
        if shutil.which("npm") is None and not (ROOT / "_vendor").is_dir():
            pytest.skip("rendering check skipped: npm is needed once to vendor MathJax and the widget manager")
        pytest.fail(f"scripts/vendor_js.sh failed:\n{vendor.stdout}\n{vendor.stderr}")
    jb = Path(sys.executable).with_name("jupyter-book")
    jb = str(jb) if jb.exists() else shutil.which("jupyter-book")
    if jb is None:
        pytest.skip("rendering check skipped: jupyter-book is not installed")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [jb, "build", "-W", "-n", "--keep-going", "--path-output", str(out), str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = proc.stdout.splitlines() + proc.stderr.splitlines()
    warnings = [line for line in lines if "WARNING" in line or "ERROR" in line]
    assert proc.returncode == 0 and not warnings, (
        "the strict website build failed (as `make book` would):\n" + "\n".join(warnings or [proc.stdout[-3000:]])
    )
    return out / "_build" / "html"


def test_website_renders(built_site: Path):
    pages = sorted((built_site / "book").glob("*.html")) + [built_site / "index.html"]
    pages = [p for p in pages if p.exists()]
    assert any(p.name.startswith("01_") for p in pages), f"chapter pages missing from {built_site}"
    chromium = _chromium()
    with ThreadPoolExecutor(max_workers=3) as pool:
        doms = dict(zip(pages, pool.map(lambda p: _dump_dom(chromium, p), pages)))
    report = {p.relative_to(built_site).as_posix(): page_problems(dom) for p, dom in doms.items()}
    bad = {page: problems for page, problems in report.items() if problems}
    assert not bad, "pages that do not render:\n" + "\n".join(f"{page}: {'; '.join(p)}" for page, p in bad.items())
    # The check has something to check: the chapter pages carry typeset math.
    chapter = next(dom for p, dom in doms.items() if p.name.startswith("01_"))
    assert "<mjx-container" in chapter, "chapter 1 shows no typeset math"



# ---------------------------------------------------------------------------------------------
# 3. layout check
# ---------------------------------------------------------------------------------------------

PROBE = Path(__file__).with_name("layout_probe.js")
WIDTHS = (1280, 390)  # a laptop and a phone

# Defects measured on 2026-12-03 that are not fixed yet (issue 15 items 4 and 9): per page, the
# code cells and outputs wider than the column at 1280 px. A page may only get better; lower a
# count when a chapter is fixed (the test says when it can be lowered).
KNOWN_LAYOUT: dict = {}
# Console messages and fonts allowed to fail: none. Fixed in book/_ext/lemmse_site.py, and failing
# the check again if they come back: the duplicate THEBE_JS_URL script of every page, the theme's
# "Got invalid theme mode" on a first visit (no default colour mode), and the widget manager's icon
# font (not vendored: three 404s on each widget page).
KNOWN_CONSOLE: tuple = ()
KNOWN_FONTS: set = set()


def _probe_page(page: Path, width: int) -> Path:
    """A copy of ``page`` beside it (same relative links) with the two parts of the probe."""
    head, body = PROBE.read_text().split("//@@HEAD", 1)[1].split("//@@BODY", 1)
    html = page.read_text(encoding="utf-8")
    html, found = re.subn(r"<head[^>]*>", lambda m: m.group(0) + "<script>" + head + "</script>", html, count=1)
    if not found or "</body>" not in html:
        raise ValueError(f"{page} has no <head> or </body>: not a built page")
    html = html.replace("</body>", "<script>" + body + "</script></body>", 1)
    copy = page.with_name(f"{page.stem}.layout{width}.html")
    copy.write_text(html, encoding="utf-8")
    return copy


def measure_layout(chromium: str, page: Path, width: int) -> dict:
    """The probe's measurements of ``page`` rendered ``width`` px wide (see layout_probe.js)."""
    copy = _probe_page(page, width)
    try:
        with tempfile.TemporaryDirectory() as profile:
            cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   "--disable-background-networking", "--disable-component-update", "--no-first-run",
                   f"--window-size={width},900", f"--user-data-dir={profile}",
                   "--virtual-time-budget=10000", "--dump-dom", copy.as_uri()]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        copy.unlink()
    found = re.search(r'<script type="application/json" id="lemmse-layout">(.*?)</script>', proc.stdout, re.S)
    if not found:
        raise RuntimeError(f"the layout probe wrote nothing on {page.name} at {width} px "
                           f"(rc {proc.returncode}): {proc.stderr[-1500:]}")
    return json.loads(found.group(1))


def layout_problems(layout: dict, page: str, known: tuple = (0, 0)) -> list[str]:
    """What is wrong with the layout of ``page`` (a name such as "05_lemmse") as measured.

    ``known`` = (wide code cells, wide outputs) tolerated at 1280 px (``KNOWN_LAYOUT``).
    """
    width, problems = layout["width"], []
    for m in layout["math"]:
        if width >= 1000:
            problems.append(f"display math {m['label']} is {m['need']} px wide, {m['avail']} px fit "
                            f"beside its number at {width} px: break it over lines")
        elif not m["scrollable"]:
            problems.append(f"display math {m['label']} is clipped at {width} px ({m['need']} > "
                            f"{m['avail']} px) and does not scroll")
    for img in layout["uncaptioned"]:
        problems.append(f"figure without a caption ({img['src']}, {img['width']} px): "
                        f"add mystnb: figure: caption")
    for img in layout.get("filealt", []):
        problems.append(f"figure image without a description as alt text ({img['src']}: "
                        f"alt {img['alt']!r}): book/_ext/lemmse_site.py gives it the caption")
    for url in layout["missing"]:
        problems.append(f"a file failed to load: {url}")
    if width >= 1000:
        for kind, items, allowed in (("code cells", layout["code"], known[0]), ("outputs", layout["outputs"], known[1])):
            if len(items) > allowed:
                first = items[0]
                problems.append(f"{len(items)} {kind} wider than the column at {width} px (known: {allowed}), "
                                f"e.g. {first['need']} > {first['avail']} px: {first['start']!r}")
    for message in layout["errors"]:
        if not any(p.search(message) for p in KNOWN_CONSOLE):
            problems.append(f"console error: {message[:300]}")
    for font in set(layout.get("fonts", [])) - KNOWN_FONTS:
        problems.append(f"font failed to load: {font}")
    return problems


def _layout(width=1280, **kw):
    base = {"width": width, "math": [], "code": [], "outputs": [], "uncaptioned": [], "filealt": [],
            "errors": [], "missing": [], "fonts": []}
    base.update(kw)
    return base


def test_layout_problems_detects_each_defect():
    wide_math = {"label": "(5.5)", "need": 623, "avail": 580, "scrollable": True}
    assert layout_problems(_layout(), "p") == []
    assert "(5.5) is 623 px wide, 580 px fit" in layout_problems(_layout(math=[wide_math]), "p")[0]
    assert layout_problems(_layout(390, math=[wide_math]), "p") == []  # scrolls on a phone: fine
    clipped = layout_problems(_layout(390, math=[{**wide_math, "scrollable": False}]), "p")
    assert "clipped at 390 px" in clipped[0]
    code = [{"index": 0, "need": 900, "avail": 700, "start": "x = 1"}] * 3
    assert "3 code cells wider" in layout_problems(_layout(code=code), "p", known=(2, 0))[0]
    assert layout_problems(_layout(code=code), "p", known=(3, 0)) == []
    assert layout_problems(_layout(390, code=code), "p") == []  # code is checked at 1280 px only
    assert "outputs wider" in layout_problems(_layout(outputs=code), "p")[0]
    assert "without a caption" in layout_problems(_layout(uncaptioned=[{"src": "a.png", "width": 500}]), "p")[0]
    assert "failed to load: file:///x.png" in layout_problems(_layout(missing=["file:///x.png"]), "p")[0]
    assert "without a description as alt text" in layout_problems(
        _layout(filealt=[{"src": "_images/0a1b.png", "alt": "_images/0a1b.png"}]), "p")[0]
    assert "console error: Uncaught ReferenceError" in layout_problems(
        _layout(errors=["Uncaught ReferenceError: Queue is not defined"]), "p")[0]
    assert "console error: Got invalid theme mode" in layout_problems(  # fixed: no longer allowed
        _layout(errors=["Got invalid theme mode: . Resetting to auto."]), "p")[0]
    assert "THEBE_JS_URL" in layout_problems(
        _layout(errors=["Uncaught SyntaxError: Identifier 'THEBE_JS_URL' has already been declared"]), "p")[0]
    assert "font failed to load: Icons" in layout_problems(_layout(fonts=["Icons"]), "p")[0]


def test_layout_probe_measures_a_hand_written_page(tmp_path):
    """The probe in a real browser, on a page with one defect of each kind and their fixed twins."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("layout probe skipped: Chromium not installed (Debian: apt-get install chromium)")
    page = tmp_path / "page.html"
    page.write_text("""<!DOCTYPE html><html><head><style>
      body { width: 600px; margin: 0; } pre { overflow-x: auto; margin: 0; }
      mjx-container { display: block; } mjx-math { display: inline-block; height: 10px; }
      .eqno { float: right; width: 50px; }</style></head><body>
      <div class="math" id="wide"><span class="eqno">(1.1)</span>
        <mjx-container><mjx-math style="width: 580px"></mjx-math></mjx-container></div>
      <div class="math" id="fits"><span class="eqno">(1.2)</span>
        <mjx-container><mjx-math style="width: 500px"></mjx-math></mjx-container></div>
      <div class="cell_input"><pre>""" + "x" * 300 + """</pre></div>
      <div class="cell_input"><pre>y = 1</pre></div>
      <div class="cell_output"><img src="data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7" width="40"></div>
      <div class="cell_output"><figure><img src="data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
        alt="A caption."><figcaption>A caption.</figcaption></figure></div>
      <div class="cell_output"><figure><img src="data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
        alt="_images/0a1b2c.png"><figcaption>Another caption.</figcaption></figure></div>
      <img src="missing.png"><script>undefinedFunction();</script>
      </body></html>""", encoding="utf-8")
    layout = measure_layout(chromium, page, 1280)
    assert [m["label"] for m in layout["math"]] == ["(1.1)"], layout
    assert len(layout["code"]) == 1 and layout["code"][0]["start"].startswith("xxx"), layout
    assert len(layout["uncaptioned"]) == 1, layout
    assert [img["alt"] for img in layout["filealt"]] == ["_images/0a1b2c.png"], layout
    assert any(url.endswith("missing.png") for url in layout["missing"]), layout
    assert any("undefinedFunction" in e for e in layout["errors"]), layout
    problems = layout_problems(layout, "page")
    assert len(problems) == 6, "\n".join(problems)


def test_website_layout(built_site: Path):
    pages = sorted((built_site / "book").glob("[0-9][0-9]_*.html")) + [built_site / "book" / "intro.html"]
    pages = [p for p in pages if p.exists()]
    chromium = _chromium()
    jobs = [(p, w) for p in pages for w in WIDTHS]
    with ThreadPoolExecutor(max_workers=3) as pool:
        layouts = list(pool.map(lambda job: measure_layout(chromium, *job), jobs))
    report, better = {}, []
    for (page, width), layout in zip(jobs, layouts):
        known = KNOWN_LAYOUT.get(page.stem, (0, 0))
        problems = layout_problems(layout, page.stem, known)
        if problems:
            report[f"{page.name} at {width} px"] = problems
        if width == 1280 and (len(layout["code"]), len(layout["outputs"])) < known:
            better.append(f"{page.stem}: {(len(layout['code']), len(layout['outputs']))} < {known}")
    assert not report, "layout defects:\n" + "\n".join(f"{k}: " + "; ".join(v) for k, v in report.items())
    # the check measures something: the chapters carry display math and figures
    assert sum(len(l["code"]) for l in layouts) > 0 or not KNOWN_LAYOUT
    if better:
        print("KNOWN_LAYOUT can be lowered: " + ", ".join(better))


# ---------------------------------------------------------------------------------------------
# 4. the site's own fixes (book/_ext/lemmse_site.py): alt texts, captions, indices, search, size
# ---------------------------------------------------------------------------------------------

sys.path.insert(0, str(BOOK / "_ext"))
import lemmse_site  # noqa: E402  (the extension under test)


def test_alt_text_is_the_caption():
    from docutils import nodes

    image = nodes.image(uri="_images/0a1b2c.png")
    figure = nodes.figure("", image, nodes.caption("", "FashionMNIST test image,  P = 5."))
    assert lemmse_site.alt_text(figure[0]) == "FashionMNIST test image, P = 5."
    figure = nodes.figure("", nodes.image(uri="x.png"), nodes.caption("", "word " * 100))
    alt = lemmse_site.alt_text(figure[0])
    assert alt.endswith("…") and len(alt) <= lemmse_site.ALT_CHARS
    lone = nodes.image(uri="_images/0a1b2c.png")
    nodes.container("", lone)
    assert "0a1b2c" not in lemmse_site.alt_text(lone)


def test_statement_titles_and_index():
    assert lemmse_site.plain_title("(Participation ratio and $n_{50}$)") == "Participation ratio and n50"
    assert lemmse_site.plain_title("(Limits in $\\sigma$)") == "Limits in σ"
    statements = {
        "thm-b": {"docname": "book/05", "realtype": "theorem", "title": "The LE-MMSE"},
        "def-a": {"docname": "book/02", "realtype": "definition", "title": ""},
        "thm-a": {"docname": "book/02", "realtype": "theorem", "title": "Tweedie"},
    }
    content = lemmse_site.statement_entries(statements, {"book/02": "The MMSE", "book/05": "LE"})
    assert [kind for kind, _ in content] == ["Definitions", "Theorems"]
    defs, thms = content[0][1], content[1][1]
    assert defs[0].name == "Definition in The MMSE" and defs[0].anchor == "def-a"
    assert [e.name for e in thms] == ["Tweedie", "The LE-MMSE"]  # in reading order
    assert all("-" not in e.name.split()[0] for e in thms)  # titles, not labels


def test_strip_source_maps(tmp_path):
    (tmp_path / "scripts").mkdir()
    js = tmp_path / "scripts" / "a.js"
    code = 'var s = "\\n/*# sourceMappingURL=data:x;base64,".concat(m, " */");'
    js.write_text(f"var a = 1;\n//# sourceMappingURL=a.js.map;\n{code}\n")
    (tmp_path / "scripts" / "a.js.map").write_text("{}" * 50)
    css = tmp_path / "b.css"
    css.write_text("p{color:red}\n/*# sourceMappingURL=b.css.map*/")
    assert lemmse_site.strip_source_maps(tmp_path) == 100
    assert not list(tmp_path.rglob("*.map"))
    assert js.read_text() == f"var a = 1;\n\n{code}\n"  # the string literal is code: kept
    assert css.read_text() == "p{color:red}\n"


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.alts, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.alts.append((attrs.get("src", ""), attrs.get("alt", "")))
        if tag == "link":
            self.links.append(attrs.get("href", ""))


def test_site_alt_texts_indices_and_size(built_site: Path):
    static = built_site / "_static"
    maps = [p.relative_to(built_site).as_posix() for p in static.rglob("*.map")]
    assert not maps, f"source maps copied to the site: {maps[:5]}"
    named = [p.name for p in list(static.rglob("*.js")) + list(static.rglob("*.css"))
             if re.search(rb"^[ \t]*(//|/\*)# sourceMappingURL=", p.read_bytes(), re.M)]
    assert not named, f"files that still name a source map: {named}"
    assert "figcaption" in (static / "lemmse.css").read_text()
    pages = sorted((built_site / "book").glob("[0-9][0-9]_*.html"))
    n_images, bad = 0, []
    for page in pages:
        parser = _Images()
        parser.feed(page.read_text())
        assert any("/lemmse.css" in link for link in parser.links), page.name
        assert "lemmse-indices" in page.read_text(), f"{page.name}: no links to the indices"
        for src, alt in parser.alts:
            n_images += "_images/" in src
            if "_images/" in src and (not alt or Path(src).stem in alt or alt.endswith(".png")):
                bad.append(f"{page.name}: {src} alt={alt!r}")
    assert n_images > 20 and not bad, f"{len(bad)} images without a text alternative: {bad[:5]}"
    index = (built_site / "prf-prf.html").read_text()
    shown = re.findall(r'<a href="book/[^"#]*#([^"]+)"><code class="xref">([^<]*)<', index)
    assert shown, "the statement index lists nothing"
    raw = [anchor for anchor, name in shown if name == anchor]
    assert not raw, f"statements listed by their labels: {raw[:5]}"


def test_search_snippets_show_no_tex(built_site: Path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(built_site))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/search.html?q=estimator"
            dom = _dump_dom(_chromium(), url)
        finally:
            server.shutdown()
    snippets = re.findall(r'<p class="context">(.*?)</p>', dom, flags=re.S)
    assert len(snippets) >= 5, "the search found (almost) nothing: the check checks nothing"
    tex = [s[:120] for s in snippets if re.search(r"\\[()\[\]]|\\[a-zA-Z]{2,}\{?|\$", s)]
    assert not tex, f"{len(tex)} of {len(snippets)} snippets show TeX: {tex[:3]}"
