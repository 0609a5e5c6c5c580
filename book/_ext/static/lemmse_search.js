/* lemmse website: search result snippets without raw TeX (issue 15, item 9).
 *
 * Sphinx builds a result's snippet from the text of the page, where math is still its TeX source
 * (MathJax typesets it only when the page is shown). Before the text is taken, display math is
 * replaced by "[equation]" and inline math by a plain reading of its TeX (Greek letters as
 * letters, commands and braces dropped). */
(() => {
  const GREEK = {
    alpha: "α", beta: "β", gamma: "γ", delta: "δ", epsilon: "ε", varepsilon: "ε", eta: "η",
    theta: "θ", kappa: "κ", lambda: "λ", mu: "μ", nu: "ν", pi: "π", rho: "ρ", sigma: "σ",
    tau: "τ", phi: "φ", varphi: "φ", chi: "χ", psi: "ψ", omega: "ω", Gamma: "Γ", Delta: "Δ",
    Theta: "Θ", Lambda: "Λ", Sigma: "Σ", Phi: "Φ", Psi: "Ψ", Omega: "Ω", times: "×",
    le: "≤", leq: "≤", ge: "≥", geq: "≥", approx: "≈", in: "∈", infty: "∞", to: "→", cdot: "·",
  };
  const plain = (tex) =>
    tex
      .replace(/\\[()\[\]]/g, "")
      .replace(/\\([A-Za-z]+)/g, (_, name) => GREEK[name] ?? "")
      .replace(/[{}^_$]|\\[,;!:]/g, "")
      .replace(/\s+/g, " ")
      .trim();
  const patch = () => {
    if (typeof Search === "undefined" || typeof Search.htmlToText !== "function") return;
    if (Search.lemmsePlainMath) return;
    const toText = Search.htmlToText;
    Search.htmlToText = (htmlString, anchor) => {
      const doc = new DOMParser().parseFromString(htmlString, "text/html");
      doc.querySelectorAll("div.math, .math.notranslate").forEach((el) => {
        const display = el.tagName === "DIV";
        el.replaceWith(doc.createTextNode(display ? " [equation] " : plain(el.textContent)));
      });
      return toText(doc.documentElement.outerHTML, anchor);
    };
    Search.lemmsePlainMath = true;
  };
  patch();
  document.addEventListener("DOMContentLoaded", patch);
})();
