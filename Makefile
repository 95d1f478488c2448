# Two entry points: `make demo` (the main job on the embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The CPU build where the local wheel cache has it; set TORCH="torch" (or a CUDA build) to choose otherwise.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" || $(BIN)/pip install -q "torch>=2.4,<2.15"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

demo: install
	@echo "The demo (train on the embedded grounded world, evaluate, report) arrives with the trainer (issue 3)."
	$(BIN)/python -c "import modeling_gatedgpt as m; c = m.GatedGPT2Config(); print(m.GatedGPT2ForCausalLM(c).num_parameters(), 'parameters in the paper-size GatedGPT2')"

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
