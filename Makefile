# effrank: `make reproduce` runs the study (default preset: demo), `make test` runs the tests.
# Both install what they need into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KERNEL := effrank
PRESET ?= demo
RESULTS ?= results
RUN ?= $(RESULTS)/$(PRESET)
ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install test reproduce confirm lab dashboard bench bench-paper browser constraints clean strip

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet -e '.[ray,tracking]'  # the package (editable), the Ray and tracking extras
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (effrank)"
	$(BIN)/python -c "from effrank_utils.cli import write_lab_settings; write_lab_settings()"  # widgets saved with notebooks
	touch $(STAMP)

test: install browser
	$(BIN)/python -m pytest -q

browser:  # Debian's chromium for the browser tests (Playwright's own browser download is not used)
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

reproduce: install
	$(BIN)/effrank reproduce --preset "$(PRESET)" --results "$(RESULTS)" $(ARGS)

confirm: install  # train the students deciding RUN's region and knee again with twice the budget (ARGS=--factor 3)
	$(BIN)/effrank confirm "$(RUN)" $(ARGS)

lab: install
	$(BIN)/effrank lab

dashboard: install  # the interactive analysis of RUN (a run folder) as a web page on localhost
	$(BIN)/effrank dashboard "$(RUN)"

bench: install
	$(BIN)/python bench/bench.py $(ARGS)

bench-paper: install  # the paper's protocol on a GPU (ARGS=--tiny checks it on a CPU)
	$(BIN)/python bench/paper_gpu.py $(ARGS)

constraints: install  # after a green `make test`: record the versions it passed with (pip install -c constraints.txt)
	{ echo "# The versions the test suite last passed with: pip install -r requirements.txt -c constraints.txt"; \
	  $(BIN)/pip freeze --exclude-editable | LC_ALL=C sort -f; } > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache
