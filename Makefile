# One entry point for a fresh clone: `make demo` and `make test` create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The PyTorch build to install when the venv has none. Override with your cluster's own build, e.g.
#   make TORCH="torch torchvision --index-url https://download.pytorch.org/whl/cu124" test
TORCH ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= all,dev
# Test processes: the suite's modules run side by side (pytest-xdist), each module in one process
TEST_WORKERS ?= 2
STAMP := $(VENV)/.aop-installed
# The documentation site (mkdocs.yml); mkdocs-material's notice about MkDocs 2 is left out of the output
MKDOCS := NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs

.PHONY: install demo test lint docs bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/aop demo

test: $(STAMP)
	$(PY) -m ruff check aop tests benchmarks scripts
	$(VENV)/bin/lint-imports
	$(VENV)/bin/deptry .
	$(MKDOCS) build --strict --quiet
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

lint: $(STAMP)
	$(PY) -m ruff check aop tests benchmarks scripts
	$(VENV)/bin/lint-imports
	$(VENV)/bin/deptry .

# the site in site/ (open site/index.html); `make test` builds it with --strict
docs: $(STAMP)
	$(MKDOCS) build

bench: $(STAMP)
	for b in benchmarks/*_bench.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build site *.egg-info
