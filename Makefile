# The two commands of the README: `make run` and `make test`. Both install what they need:
# `make run` the runtime only, `make test` the test tools too (a stamp each).
# The venv is made with the distribution's Python where there is one: the interpreter
# `make install-system` runs the service on, so the tests run on what is shipped. Debian's is
# built with PGO and LTO and runs rc-mta ~25% faster than a plain shared build such as
# pyenv's (`task show` 1,819 -> 1,460 M instructions, a reply parsed in 0.77 -> 0.55 ms). Without
# its venv module, or older than 3.11, the first python3 on PATH. PYTHON=... chooses another.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell /usr/bin/python3 -c 'import sys; print(sys.executable if sys.version_info >= (3, 11) else "python3")' 2>/dev/null || echo python3)
endif
VENV   := .venv
BIN    := $(VENV)/bin
# Names the interpreter the venv was made with: another PYTHON makes the venv again.
VENV_MARK := $(VENV)/.made-with-$(subst /,_,$(PYTHON))
RUNTIME_STAMP := $(VENV)/.installed-runtime
TEST_STAMP    := $(VENV)/.installed-test
# Test processes in parallel (pytest-xdist): two per core (most tests wait on servers, not
# on the CPU), at most 8; each starts its own NSD and PostgreSQL. `make test TEST_WORKERS=1`
# runs one process.
TEST_WORKERS ?= $(shell n=$$(( $$(nproc 2>/dev/null || echo 1) * 2 )); [ "$$n" -gt 8 ] && n=8; echo $$n)

.PHONY: run test lint install install-system system-deps clean

$(VENV_MARK):
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); python3 -m venv $(VENV); } || { rm -rf $(VENV); echo "rc-mta: python3 cannot make a venv: install python3-venv (Debian) and try again" >&2; exit 1; }
	touch $@

# Byte-compiled at install: where PYTHONDONTWRITEBYTECODE is set nothing is cached later,
# and every CLI call would compile SQLAlchemy and pydantic again (0.9 s instead of 0.45 s).
$(RUNTIME_STAMP): pyproject.toml $(VENV_MARK)
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	$(BIN)/python -m compileall -q rc_mta
	touch $@

$(TEST_STAMP): pyproject.toml $(VENV_MARK)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	$(BIN)/python -m compileall -q rc_mta
	touch $@ $(RUNTIME_STAMP)

install: $(TEST_STAMP)

# STARTTLS with a self-signed pair made under var/tls/, unless [inbound.tls] names one;
# without the openssl command (it makes the pair) plain SMTP, rather than no service.
run: $(RUNTIME_STAMP)
	RC_MTA_INBOUND__TLS__SELF_SIGNED=$$(command -v openssl >/dev/null && echo true || echo false) $(BIN)/rc-mta serve

# On a server, as root: a venv at PREFIX with the runtime alone, the systemd unit pointing
# there, the rc-mta user and its directories, and /etc/rc-mta/rc-mta.toml unless one is
# there (scripts/install.sh). DESTDIR stages it all under another root for a package.
# SERVER_PYTHON: the distribution's, not a pyenv one under /root (the unit hides /root).
PREFIX  ?= /opt/rc-mta
DESTDIR ?=
SERVER_PYTHON ?= /usr/bin/python3
install-system:
	PREFIX='$(PREFIX)' DESTDIR='$(DESTDIR)' PYTHON='$(SERVER_PYTHON)' scripts/install.sh

lint: $(TEST_STAMP)
	$(BIN)/ruff check rc_mta tests bench
	$(BIN)/ruff format --check rc_mta tests bench
	$(BIN)/mypy

system-deps:
	scripts/system-deps.sh

# system-deps first: on Debian the venv itself needs python3-venv.
test: system-deps $(TEST_STAMP) lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

clean:
	rm -rf $(VENV) var build *.egg-info
