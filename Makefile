# The two set-up commands of README.rst: each installs what it needs first
# (scripts/bootstrap.sh is idempotent and quick when everything is there).
#
#   make run  [ARGS='--port 1081 ...']   start the proxy in the foreground
#   make test [PYTEST_ARGS='-k socks5']   run the whole test suite
#   make test-trial                       run the pure unit tests (codecs, auth
#                                         conversations: TRIAL_MODULES) under
#                                         Twisted's own runner, trial, to keep
#                                         them runnable without pytest
#   make docs                             build the HTML documentation
#   make bench [PROXY_ARGS='--workers 2'] [BENCH_ARGS='--bulk-mb 100']
#                                         benchmark against Dante and microsocks
#   make bench-smoke                      the same, tiny: checks every measurement runs

VENV := .venv
ARGS ?=
PYTEST_ARGS ?=
PROXY_ARGS ?=
BENCH_ARGS ?=
TRIAL_MODULES := tests.wire tests.auth.test_maf tests.auth.test_gssapi_conversation tests.auth.test_passwordfile tests.server.test_negotiation tests.client.test_against_own_server_in_memory

.PHONY: run test test-trial docs bench bench-smoke

run:
	@bash scripts/bootstrap.sh run
	exec $(VENV)/bin/twistd -n --pidfile= --logger txsocksgss.logs.fastTextObserver socksgss $(ARGS)

test:
	@bash scripts/bootstrap.sh test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# trial writes its _trial_temp/ in the working directory (ignored by git).
test-trial:
	@bash scripts/bootstrap.sh test
	$(VENV)/bin/trial $(TRIAL_MODULES)

docs:
	@bash scripts/bootstrap.sh test
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

bench:
	@bash scripts/bootstrap.sh test
	$(VENV)/bin/python -m benchmarks --proxy-args='$(PROXY_ARGS)' $(BENCH_ARGS)

bench-smoke:
	@bash scripts/bootstrap.sh test
	$(VENV)/bin/python -m benchmarks --smoke --proxy-args='$(PROXY_ARGS)' $(BENCH_ARGS)
