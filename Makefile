# The two commands of the README: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint install system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# STARTTLS with a self-signed pair made under var/tls/, unless [inbound.tls] names one.
run: $(STAMP)
	RC_MTA_INBOUND__TLS__SELF_SIGNED=true $(BIN)/rc-mta serve

lint: $(STAMP)
	$(BIN)/ruff check rc_mta tests bench
	$(BIN)/ruff format --check rc_mta tests bench
	$(BIN)/mypy

system-deps:
	scripts/system-deps.sh

test: $(STAMP) system-deps lint
	$(BIN)/pytest --durations=15

clean:
	rm -rf $(VENV) var build *.egg-info
