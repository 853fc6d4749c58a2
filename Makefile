# `make demo` runs the end-to-end demo, `make test` the four-mode test suite.
# Both create .venv and install the package with what they need on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Longest tests first (tests/conftest.py, tests/durations.json), handed out one at a time to the worker
# that is free: --dist loadgroup with --no-loadscope-reorder makes each test its own unit in our order
# (we mark no xdist_group). The default --dist load deals a quarter of the tests out round-robin up front:
# 21.0 min against 17.2 for the TensorFlow mode on this 2-core machine.
PYTEST := $(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup --no-loadscope-reorder --durations=15
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: demo test lint docs test-tf test-jax test-legacy test-torch test-jax-onnx battery durations clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/keras-attention demo $(DEMO_ARGS)

# Keras 3 on TensorFlow, Keras 3 on JAX, tf_keras (TF_USE_LEGACY_KERAS=1), then Keras 3 on PyTorch
# (the tests marked torch_mode: tests/conftest.py, TORCH_MODE_FILES); two pytest-xdist workers each
# (CI has 2 cores; much of a test is single-threaded graph building).
test: $(STAMP) lint
	KERAS_BACKEND=tensorflow $(PYTEST) tests
	KERAS_BACKEND=jax $(PYTEST) tests
	TF_USE_LEGACY_KERAS=1 $(PYTEST) tests
	KERAS_BACKEND=torch $(PYTEST) -m "torch_mode and not slow" tests
	$(MAKE) test-jax-onnx

# ruff (configured in pyproject.toml): lint, and the format check (`ruff format .` applies it).
lint: $(STAMP) docs
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The documentation site (mkdocs.yml) into site/, warnings as errors; its home page is README.md
# with the docs/ links made relative (written here, not kept in git, so the two cannot drift).
docs: $(STAMP)
	sed 's#](docs/#](#g' README.md > docs/index.md
	$(VENV)/bin/mkdocs build --strict --quiet

test-tf: $(STAMP)
	KERAS_BACKEND=tensorflow $(PYTEST) tests $(ARGS)
test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PYTEST) tests $(ARGS)
test-legacy: $(STAMP)
	TF_USE_LEGACY_KERAS=1 $(PYTEST) tests $(ARGS)

# Keras 3 on PyTorch (the CPU wheel of the test extra): the layer harness files, attach, the
# pretrained models, distribution's refusal; not the slow tests (make test's 35 minutes on 2 cores).
# Which files: the `torch_mode` marker, given by tests/conftest.py (TORCH_MODE_FILES), not a list here.
test-torch: $(STAMP)
	KERAS_BACKEND=torch $(PYTEST) -m "torch_mode and not slow" tests $(ARGS)

# ONNX from the JAX backend: jax2onnx cannot share .venv with tfmot (absl-py 2 against 1.x), so it
# has its own environment; KA_TEST_JAX2ONNX=1 makes the tests fail, not skip, if jax2onnx is missing.
JAX_ONNX_VENV := .venv-jax-onnx
JAX_ONNX_STAMP := $(JAX_ONNX_VENV)/.installed-stamp
$(JAX_ONNX_STAMP): pyproject.toml
	test -x $(JAX_ONNX_VENV)/bin/python || $(PYTHON) -m venv $(JAX_ONNX_VENV)
	$(JAX_ONNX_VENV)/bin/python -m pip install -q --upgrade pip
	$(JAX_ONNX_VENV)/bin/python -m pip install -q -e ".[test-jax-onnx]"
	touch $(JAX_ONNX_STAMP)
test-jax-onnx: $(JAX_ONNX_STAMP)
	KERAS_BACKEND=jax KA_TEST_JAX2ONNX=1 $(JAX_ONNX_VENV)/bin/python -m pytest -q -p no:cacheprovider -n 2 \
		--durations=5 tests/test_export.py $(ARGS)

# Re-measures tests/durations.json (each mode's seconds per test), which orders the tests longest first.
durations: $(STAMP)
	KA_RECORD_DURATIONS=1 $(MAKE) test-tf test-jax test-legacy test-torch

# Bad inputs across the public API in the three modes: clear / vague / silent / crash counts.
battery: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) tools/bad_input_battery.py
	KERAS_BACKEND=jax $(PY) tools/bad_input_battery.py
	TF_USE_LEGACY_KERAS=1 $(PY) tools/bad_input_battery.py

clean:
	rm -rf $(VENV) $(JAX_ONNX_VENV) build *.egg-info keras_attention_demo
