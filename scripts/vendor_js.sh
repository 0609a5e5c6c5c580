#!/usr/bin/env bash
# Vendor the browser JavaScript the website needs, so that it renders offline:
#   MathJax 3.2.2 (math), require.js 2.3.8 and @jupyter-widgets/html-manager 1.0.6 (ipywidgets).
# Without these, Jupyter Book loads them from CDNs and an offline page shows raw TeX and no widgets.
#
# Usage: scripts/vendor_js.sh [DEST]     (DEST defaults to _vendor, which _config.yml serves as static files)
#
# The packages come from the npm registry through `npm pack` (the only network this needs), with pinned
# versions whose tarballs are checked against pinned SHA-512 digests before anything is extracted.
# The script is idempotent: when DEST already holds exactly these versions it does nothing.
# DEST must not be named _static (Jupyter Book would inject every .js in it into every page).
set -euo pipefail
cd "$(dirname "$0")/.."

DEST="${1:-_vendor}"
case "$(basename "$DEST")" in
  _static) echo "vendor_js.sh: DEST must not be named _static (got $DEST)" >&2; exit 2 ;;
esac

# name@version  tarball-file  sha512 of the tarball (hex)
PACKAGES=(
  "mathjax@3.2.2 mathjax-3.2.2.tgz 06df9249553c7811b6ef30a155ec0e89c62ced7b1db78d2a9b8f94a47c97ee4d3f3bd36588f73ec7bee4d7f144b0fb2328f64626fb5164cd6f3be81e5b43a11b"
  "requirejs@2.3.8 requirejs-2.3.8.tgz eff71348b39d6243413497033167fe96e16f32b8959bb798c69e017050ac017d30178db557271ee525cfd7b73e25de68b5728635e848a27165c905d2a302fa33"
  "@jupyter-widgets/html-manager@1.0.6 jupyter-widgets-html-manager-1.0.6.tgz f8c9fe45af30c881eb61a5297e67fd03776c2e4b7f36ec333d037cb2d85dc410f7e5557970e25ba6680c84d476ee7feb98fde62b211ed0f58226bb59ad74d70d"
)

STAMP_TEXT="$(printf '%s\n' "${PACKAGES[@]}")"
if [ -f "$DEST/VERSIONS.txt" ] && [ "$(cat "$DEST/VERSIONS.txt")" = "$STAMP_TEXT" ] \
   && [ -f "$DEST/mathjax/tex-mml-chtml.js" ] && [ -f "$DEST/require.js" ] && [ -f "$DEST/widgets/embed-amd.js" ] \
   && compgen -G "$DEST/widgets/fonts/*.woff2" >/dev/null; then
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "vendor_js.sh: npm is needed to fetch MathJax and the widget manager; install Node.js and npm" \
       "(Debian: apt-get install npm) and run it again" >&2
  exit 1
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

specs=()
for entry in "${PACKAGES[@]}"; do
  read -r spec _ _ <<<"$entry"
  specs+=("$spec")
done
echo "vendor_js.sh: npm pack ${specs[*]}"
npm pack --silent --ignore-scripts --pack-destination "$TMP" "${specs[@]}" >/dev/null

for entry in "${PACKAGES[@]}"; do
  read -r spec file digest <<<"$entry"
  if [ ! -f "$TMP/$file" ]; then
    echo "vendor_js.sh: npm pack did not produce $file for $spec" >&2
    exit 1
  fi
  got="$(sha512sum "$TMP/$file" | cut -d' ' -f1)"
  if [ "$got" != "$digest" ]; then
    echo "vendor_js.sh: integrity check failed for $spec: sha512 $got, expected $digest" >&2
    exit 1
  fi
  mkdir -p "$TMP/x/${file%.tgz}"
  tar -xzf "$TMP/$file" -C "$TMP/x/${file%.tgz}"
done

NEW="$TMP/new"
mkdir -p "$NEW/mathjax/input/tex" "$NEW/mathjax/output/chtml/fonts" "$NEW/widgets"

# MathJax: the combined component, the TeX extensions it autoloads, the CHTML fonts (Apache-2.0).
MJ="$TMP/x/mathjax-3.2.2/package"
cp "$MJ/es5/tex-mml-chtml.js" "$NEW/mathjax/"
cp -r "$MJ/es5/input/tex/extensions" "$NEW/mathjax/input/tex/"
cp -r "$MJ/es5/output/chtml/fonts/woff-v2" "$NEW/mathjax/output/chtml/fonts/"
cp "$MJ/LICENSE" "$NEW/mathjax/LICENSE"

# require.js (MIT; the licence is in the file header).
cp "$TMP/x/requirejs-2.3.8/package/require.js" "$NEW/require.js"

# The ipywidgets HTML manager (BSD-3-Clause): the AMD embedder used by myst-nb's widget output.
WM="$TMP/x/jupyter-widgets-html-manager-1.0.6/package"
cp "$WM/dist/embed-amd.js" "$NEW/widgets/"
# Its icon fonts (Font Awesome Free 5.15.4, SIL OFL 1.1), which its style sheet loads from
# @jupyter-widgets/html-manager/dist/ relative to the page: book/_ext/lemmse_site.py puts them there.
mkdir -p "$NEW/widgets/fonts"
cp "$WM"/dist/*.woff2 "$NEW/widgets/fonts/"
cp "$WM/LICENSE" "$NEW/widgets/LICENSE"

printf '%s\n' "$STAMP_TEXT" > "$NEW/VERSIONS.txt"

# Replace DEST in one step, so that an interrupted run never leaves a half-filled folder behind.
rm -rf "$DEST.old"
if [ -e "$DEST" ]; then mv "$DEST" "$DEST.old"; fi
mkdir -p "$(dirname "$DEST")"
mv "$NEW" "$DEST"
rm -rf "$DEST.old"
echo "vendor_js.sh: wrote $DEST ($(du -sh "$DEST" | cut -f1))"
