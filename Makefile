# Two entry points: `make demo` (the main job on the embedded default) and `make test`. Both install exactly
# requirements.lock (every package and version, direct and transitive) into .venv, so an upstream release cannot change
# what a fresh clone runs. `make lock` regenerates the lock from setup.cfg's ranges; `make canary` tries the newest
# releases instead (see tests/canary.py).
PYTHON ?= python3
VENV ?= .venv
# The CPU build where the local wheel cache has it; set TORCH="torch" (or a CUDA build) to choose otherwise. torch is
# the one package the lock leaves out (its build is a per-machine choice); its own dependencies are locked.
TORCH ?= torch==2.13.0
LOCK := requirements.lock
EXTRAS := train,test,analysis,qlora
BIN := $(VENV)/bin
comma := ,
# a local wheel folder (as on this project's machines), passed to uv for the CPU torch build
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)

.PHONY: install demo test bench-gpu lock canary clean

install: $(VENV)/.installed

$(VENV)/.installed: $(LOCK) setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "pip==26.3"  # the installer is pinned too
	$(BIN)/pip install -q "$(TORCH)" || $(BIN)/pip install -q "torch>=2.4,<2.15"
	$(BIN)/pip install -q --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

# Running the demo again replaces the last demo (a train.py run into a folder with a run in it is otherwise refused).
demo: install
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no train.py \
		--overwrite_output_dir true
	@echo "Checkpoint + card: outputs/demo   Report: outputs/demo/report/{report.json,loss_curves.png,gate_by_word_class.png}"

test: install
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

# The GPU benchmark (bench/gpu.py): paper size on one CUDA device, bf16, eager and compiled, ~5 minutes. On a machine
# without the local wheel folder, TORCH's pin takes the CUDA build from the package index.
bench-gpu: install
	$(BIN)/python bench/gpu.py

# The lock for this machine's Python (3.11, x86_64 Linux), resolved by uv from setup.cfg with every extra; torch is
# resolved as the CPU build so that its dependencies are locked but no CUDA wheels are. LOCK_HOLD keeps a package
# back: transformers stays at 5.23.0, the release the suite and the experiments ran on, until moving the lock is
# done as a change of its own (`make lock LOCK_HOLD=`). `make canary` ran the whole suite on 5.24.0 (403 tests,
# all passed; the lock test aside) and the version matrix loads checkpoints under it.
LOCK_HOLD ?= transformers==5.23.0
lock: install
	printf 'torch==2.13.0+cpu\n$(LOCK_HOLD)\n' > $(VENV)/lock-constraints.txt
	$(BIN)/uv pip compile setup.cfg $(addprefix --extra ,$(subst $(comma), ,$(EXTRAS))) --python-version 3.11 \
		$(FIND_LINKS) -c $(VENV)/lock-constraints.txt --no-emit-package torch --upgrade -o $(LOCK)

canary: install
	$(BIN)/python -m tests.canary

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache outputs
