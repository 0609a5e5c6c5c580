#!/usr/bin/env bash
# Execute book chapters and refresh their committed outputs.
#
# Usage: scripts/execute_chapter.sh book/NN_name.md [book/MM_other.md ...]
#
# For each chapter (a MyST Markdown notebook paired with book/NN_name.ipynb by jupytext):
#   1. jupytext --sync      copy the edited Markdown cells into the notebook (creates it if missing);
#   2. nbclient             run the notebook in place with the project's kernel (outputs, widget state);
#   3. jupytext --sync      bring the Markdown twin back in step with the executed notebook.
# Commit both files afterwards. The website shows these outputs and nbval (`make test`) compares them.
#
# The chapters read the real data sets from $LEMMSE_DATA; when it is unset and ../shared/data exists
# (the project's data folder beside the repository) it is used.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

if [ "$#" -eq 0 ]; then
  echo "usage: scripts/execute_chapter.sh book/NN_name.md [...]" >&2
  exit 2
fi

BIN="${VENV:-$ROOT/.venv}/bin"
for tool in jupytext python; do
  if [ ! -x "$BIN/$tool" ]; then
    echo "execute_chapter.sh: $BIN/$tool not found; create the environment first (make venv)" >&2
    exit 1
  fi
done

if [ -z "${LEMMSE_DATA:-}" ] && [ -d "$ROOT/../shared/data" ]; then
  LEMMSE_DATA="$(cd "$ROOT/../shared/data" && pwd)"
  export LEMMSE_DATA
fi
echo "execute_chapter.sh: LEMMSE_DATA=${LEMMSE_DATA:-<unset>}"

for arg in "$@"; do
  md="${arg%.ipynb}"
  md="${md%.md}.md"
  nb="${md%.md}.ipynb"
  if [ ! -f "$md" ]; then
    echo "execute_chapter.sh: $md not found" >&2
    exit 1
  fi
  if ! head -n 20 "$md" | grep -q "formats: ipynb,md:myst"; then
    echo "execute_chapter.sh: $md has no jupytext header pairing it with the notebook" \
         "(formats: ipynb,md:myst); see book/01_inverse_problems.md" >&2
    exit 1
  fi
  start=$(date +%s)
  "$BIN/jupytext" --sync "$md"
  # build the native kernels first: their one-line first-use note must not land in the notebook
  "$BIN/python" -c "from lemmse import _native; _native.load_kernel(); _native.load_slide_kernel()"
  # nbclient directly (as `jupyter execute --inplace` does), but without the per-cell timestamps that
  # `jupyter execute` records in the cell metadata, and with consecutive prints merged into one output,
  # so that an unchanged chapter gives an unchanged notebook.
  "$BIN/python" - "$nb" <<'PY'
import os
import sys

import nbformat
from nbclient import NotebookClient

path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
client = NotebookClient(
    nb,
    timeout=1800,
    record_timing=False,
    coalesce_streams=True,
    store_widget_state=True,
    resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}},
)
client.execute()
for cell in nb.cells:
    cell.metadata.pop("execution", None)
tmp = path + ".tmp"
nbformat.write(nb, tmp)
os.replace(tmp, path)
PY
  "$BIN/jupytext" --sync "$md"
  echo "execute_chapter.sh: $nb executed in $(( $(date +%s) - start )) s"
done
