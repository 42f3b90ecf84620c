# The two commands in the README: `make demo` and `make test`. Each creates the virtual
# environment it needs on first use; nothing else has to be installed by hand.
PYTHON ?= python3
CONSTRAINTS ?= constraints.txt
VENV := .venv
VENV_TL3 := .venv-tl3
PIP_FLAGS := -q --disable-pip-version-check
export PYTHONUNBUFFERED := 1

.PHONY: demo test lint typecheck unit tl3 notebooks docs bench clean

demo: $(VENV)/.installed
	$(VENV)/bin/circuits demo --features

test: lint typecheck unit tl3 docs

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check circuits tests benchmarks
	$(VENV)/bin/ruff format --check circuits tests benchmarks
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy circuits

# The tutorials run once per `make test`: `unit` executes copies of them in $(NOTEBOOKS)
# (gitignored), keeping their outputs, and `docs` renders those copies. Plotly figures are written
# as HTML that the site's own copy of plotly.js draws.
NOTEBOOKS := docs/tutorials
RUN_NOTEBOOKS := PLOTLY_RENDERER=sphinx_gallery $(VENV)/bin/pytest -q --nbmake --overwrite
COPY_NOTEBOOKS := rm -rf $(NOTEBOOKS) && mkdir -p $(NOTEBOOKS) && cp tutorials/*.ipynb $(NOTEBOOKS)/

unit: $(VENV)/.installed
	$(COPY_NOTEBOOKS)
	$(RUN_NOTEBOOKS) tests $(NOTEBOOKS)
	touch $(NOTEBOOKS)/.executed

notebooks: $(VENV)/.installed
	$(COPY_NOTEBOOKS)
	$(RUN_NOTEBOOKS) $(NOTEBOOKS)
	touch $(NOTEBOOKS)/.executed

# The API reference and tutorials as a website, in site/ (open site/index.html). Strict: a broken
# cross-reference or any other warning fails the build. The tutorials are executed first unless
# `unit` (or `notebooks`) already ran them since a tutorial or the package last changed.
docs: $(VENV)/.installed
	@if [ ! -f $(NOTEBOOKS)/.executed ] || [ -n "$$(find tutorials circuits -newer \
		$(NOTEBOOKS)/.executed \( -name '*.ipynb' -o -name '*.py' \) | head -1)" ]; then \
		$(MAKE) --no-print-directory notebooks; fi
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The transformer tests again, against the transformer-lens 3.x line (HookedTransformer).
tl3: $(VENV_TL3)/.installed
	$(VENV_TL3)/bin/python -m pytest -q -m transformer tests

bench: $(VENV)/.installed
	$(VENV)/bin/python -m benchmarks

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-compile -c $(CONSTRAINTS) -e ".[dev,docs]" 2>&1 | grep -v "is ignored" || true
	$(VENV)/bin/python -c "import circuits, torch, transformer_lens, sklearn, captum, mkdocs_jupyter"
	touch $@

# transformer-lens 3.9 needs the same packages as 4.x plus better-abc, so .venv-tl3 holds just
# those two and reads everything else from .venv through a .pth file placed after its own packages.
# SAELens (which needs transformer-lens < 4) lives here too, for the dictionary interop tests:
# with .venv's packages it needs only simple-parsing and docstring-parser to import, load and save.
$(VENV_TL3)/.installed: $(VENV)/.installed
	$(PYTHON) -m venv --without-pip $(VENV_TL3)
	$(VENV)/bin/python -c "import site; print('import site; site.addsitedir(%r)' % site.getsitepackages()[0])" \
		> "$$($(VENV_TL3)/bin/python -c 'import site; print(site.getsitepackages()[0])')/zz-circuits-base.pth"
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-compile --no-deps -c $(CONSTRAINTS) \
		--target "$$($(VENV_TL3)/bin/python -c 'import site; print(site.getsitepackages()[0])')" \
		"transformer-lens==3.9.0" "better-abc==0.0.3" \
		"sae-lens==6.54.12" "simple-parsing==0.1.9" "docstring-parser==0.18.0"
	$(VENV_TL3)/bin/python -c "import circuits, sae_lens; from transformer_lens import HookedTransformer"
	touch $@

clean:
	rm -rf $(VENV) $(VENV_TL3) circuits-demo site $(NOTEBOOKS)
