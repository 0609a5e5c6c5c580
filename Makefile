# lemmse: two commands on a fresh machine.
#   make book   build the website into _build/html (the main job)
#   make test   run every test: unit tests + nbval over every chapter (+ rendering check)
# Both create or reuse the virtual environment .venv themselves.
#
# Another torch (e.g. a CUDA build on a GPU machine):  make TORCH="torch==2.5.1" test
# torch is installed first, alone, so that no other requirement can pull a CUDA build of it.

PYTHON ?= python3
TORCH  ?= torch==2.13.0
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: book test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

book: $(STAMP) vendor
	$(VENV)/bin/jupyter-book build -W -n --keep-going .

# MathJax, require.js and the ipywidgets HTML manager for the offline website (pinned, integrity-checked npm packages).
.PHONY: vendor
vendor:
	bash scripts/vendor_js.sh

test: $(STAMP)
	$(PY) -m pytest --nbval --nbval-current-env --nbval-sanitize-with nbval_sanitize.cfg

clean:
	rm -rf _build
