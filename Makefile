# The two set-up commands of the README: `make run` and `make test`. Each installs what it needs first.
PYTHON ?= python3
PROMPT ?= Explain in three sentences why the sky is blue.

.PHONY: setup run test

setup:
	PYTHON=$(PYTHON) bash scripts/setup.sh

run: setup
	tokenleap generate "$(PROMPT)" --method ar --max-new-tokens 96

# The suite on this machine's own path, then the runtime-dependent tests again on the path a CPU
# without native bf16 takes (forced), so an AVX-512 machine checks the AVX2 path too; that pass
# also runs int8 on PyTorch's kernel, as where tokenleap's cannot be built (no C compiler).
test: setup
	$(PYTHON) -m pytest -q
	TOKENLEAP_NO_NATIVE_BF16=1 TOKENLEAP_NO_NATIVE_KERNELS=1 $(PYTHON) -m pytest -q tests/models tests/test_cli.py tests/test_generate.py
