// Injected into a copy of every built page by tests/test_book.py (the layout check).
// Part 1 (start of <head>): record script errors, failed loads and console.error calls.
// Part 2 (end of <body>): once the page has loaded and MathJax has typeset, measure the
// layout and write it as JSON into <script type="application/json" id="lemmse-layout">,
// which `chromium --dump-dom` returns.
//@@HEAD
window.__lemmse = {errors: [], missing: []};
window.addEventListener("error", function (e) {
  var t = e.target;
  if (t && t !== window && (t.src || t.href)) {
    window.__lemmse.missing.push(t.src || t.href);
  } else {
    window.__lemmse.errors.push(String(e.message || e));
  }
}, true);
window.addEventListener("unhandledrejection", function (e) {
  window.__lemmse.errors.push("unhandled rejection: " + e.reason);
});
(function () {
  var original = console.error;
  console.error = function () {
    window.__lemmse.errors.push(Array.prototype.slice.call(arguments).join(" "));
    return original.apply(console, arguments);
  };
})();
//@@BODY
(function () {
  function px(x) { return Math.round(x); }
  function scrolls(el) {
    var o = getComputedStyle(el).overflowX;
    return o === "auto" || o === "scroll";
  }
  function measure() {
    var out = {width: window.innerWidth, math: [], code: [], outputs: [], uncaptioned: [], filealt: [],
               errors: window.__lemmse.errors, missing: window.__lemmse.missing, fonts: []};
    document.querySelectorAll("div.math").forEach(function (div) {
      var m = div.querySelector("mjx-container");
      if (!m) return;
      var eqno = div.querySelector(".eqno");
      var label = eqno ? eqno.textContent.replace("#", "").trim() : (div.id || "unnumbered");
      var avail = div.clientWidth - (eqno ? eqno.getBoundingClientRect().width : 0);
      var content = m.querySelector("mjx-math") || m;
      var need = content.getBoundingClientRect().width;
      if (need > avail + 1) {
        var el = m, scrollable = false;
        while (el && el !== div.parentElement) { scrollable = scrollable || scrolls(el); el = el.parentElement; }
        out.math.push({label: label, need: px(need), avail: px(avail), scrollable: scrollable});
      }
    });
    function wide(selector, list) {
      document.querySelectorAll(selector).forEach(function (pre, i) {
        if (pre.scrollWidth > pre.clientWidth + 1) {
          list.push({index: i, need: pre.scrollWidth, avail: pre.clientWidth,
                     start: pre.textContent.trim().slice(0, 60)});
        }
      });
    }
    wide("div.cell_input pre", out.code);
    wide("div.cell_output pre", out.outputs);
    document.querySelectorAll("div.cell_output img").forEach(function (img) {
      if (img.closest(".jupyter-widgets")) return;  // drawn by a widget, under its own caption
      var fig = img.closest("figure");
      if (!fig || !fig.querySelector("figcaption")) {
        out.uncaptioned.push({src: img.getAttribute("src").slice(-40), width: img.width});
      } else if (/^\s*$|\.(png|jpe?g|gif|svg|webp)\s*$/i.test(img.getAttribute("alt") || "")) {
        out.filealt.push({src: img.getAttribute("src").slice(-40), alt: img.getAttribute("alt")});
      }
    });
    if (document.fonts) {
      document.fonts.forEach(function (f) { if (f.status === "error") out.fonts.push(f.family); });
    }
    var node = document.createElement("script");
    node.type = "application/json";
    node.id = "lemmse-layout";
    node.textContent = JSON.stringify(out);
    document.body.appendChild(node);
  }
  function ready() {
    var typeset = window.MathJax && MathJax.startup && MathJax.startup.promise;
    (typeset ? MathJax.startup.promise : Promise.resolve()).then(function () {
      setTimeout(measure, 300);
    });
  }
  if (document.readyState === "complete") ready(); else window.addEventListener("load", ready);
})();
