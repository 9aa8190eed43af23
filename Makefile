# The two set-up commands of the README: `make run` and `make test`. Each installs what it needs first.
PYTHON ?= python3
PROMPT ?= Explain in three sentences why the sky is blue.

.PHONY: setup run test

setup:
	PYTHON=$(PYTHON) bash scripts/setup.sh

run: setup
	tokenleap generate "$(PROMPT)" --method ar --max-new-tokens 96

test: setup
	$(PYTHON) -m pytest -q
