# The two commands of the README's quick start:
#   make book   build the book (quick profile, offline on the embedded data)
#   make test   run the whole test suite (unit, notebooks in the smoke profile, book + browser)
PY := .venv/bin/python
PROFILE ?= quick

.PHONY: book test bench clean

book:
	scripts/bootstrap.sh
	$(PY) -m fatlib book build --profile $(PROFILE)

test:
	scripts/bootstrap.sh --browser
	$(PY) -m pytest

bench:
	scripts/bootstrap.sh
	$(PY) -m fatlib bench

clean:
	rm -rf _build
