# The two commands in the README: `make demo` and `make test`. Each creates the virtual
# environment it needs on first use; nothing else has to be installed by hand.
PYTHON ?= python3
CONSTRAINTS ?= constraints.txt
VENV := .venv
VENV_TL3 := .venv-tl3
PIP_FLAGS := -q --disable-pip-version-check
export PYTHONUNBUFFERED := 1

.PHONY: demo test lint typecheck unit tl3 bench clean

demo: $(VENV)/.installed
	$(VENV)/bin/circuits demo

test: lint typecheck unit tl3

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check circuits tests benchmarks
	$(VENV)/bin/ruff format --check circuits tests benchmarks
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy circuits

unit: $(VENV)/.installed
	$(VENV)/bin/pytest -q --nbmake tests tutorials

# The transformer tests again, against the transformer-lens 3.x line (HookedTransformer).
tl3: $(VENV_TL3)/.installed
	$(VENV_TL3)/bin/python -m pytest -q -m transformer tests

bench: $(VENV)/.installed
	$(VENV)/bin/python -m benchmarks

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-compile -c $(CONSTRAINTS) -e ".[dev]" 2>&1 | grep -v "is ignored" || true
	$(VENV)/bin/python -c "import circuits, torch, transformer_lens, sklearn, captum"
	touch $@

# transformer-lens 3.9 needs the same packages as 4.x plus better-abc, so .venv-tl3 holds just
# those two and reads everything else from .venv through a .pth file placed after its own packages.
$(VENV_TL3)/.installed: $(VENV)/.installed
	$(PYTHON) -m venv --without-pip $(VENV_TL3)
	$(VENV)/bin/python -c "import site; print('import site; site.addsitedir(%r)' % site.getsitepackages()[0])" \
		> "$$($(VENV_TL3)/bin/python -c 'import site; print(site.getsitepackages()[0])')/zz-circuits-base.pth"
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-compile --no-deps \
		--target "$$($(VENV_TL3)/bin/python -c 'import site; print(site.getsitepackages()[0])')" \
		"transformer-lens==3.9.0" "better-abc==0.0.3"
	$(VENV_TL3)/bin/python -c "import circuits; from transformer_lens import HookedTransformer"
	touch $@

clean:
	rm -rf $(VENV) $(VENV_TL3) circuits-demo
