# The two set-up commands of README.rst: each installs what it needs first
# (scripts/bootstrap.sh is idempotent and quick when everything is there).
#
#   make run  [ARGS='--port 1081 ...']   start the proxy in the foreground
#   make test [PYTEST_ARGS='-k socks5']   run the whole test suite
#   make docs                             build the HTML documentation
#   make bench [PROXY_ARGS='--workers 2'] [BENCH_ARGS='--bulk-mb 100']
#                                         benchmark against Dante and microsocks
#   make bench-smoke                      the same, tiny: checks every measurement runs

VENV := .venv
ARGS ?=
PYTEST_ARGS ?=
PROXY_ARGS ?=
BENCH_ARGS ?=

.PHONY: run test docs bench bench-smoke

run:
	@bash scripts/bootstrap.sh run
	exec $(VENV)/bin/twistd -n --pidfile= --logger txsocksgss.logs.fastTextObserver socksgss $(ARGS)

test:
	@bash scripts/bootstrap.sh test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

docs:
	@bash scripts/bootstrap.sh test
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

bench:
	@bash scripts/bootstrap.sh test
	$(VENV)/bin/python -m benchmarks --proxy-args='$(PROXY_ARGS)' $(BENCH_ARGS)

bench-smoke:
	@bash scripts/bootstrap.sh test
	$(VENV)/bin/python -m benchmarks --smoke --proxy-args='$(PROXY_ARGS)' $(BENCH_ARGS)
