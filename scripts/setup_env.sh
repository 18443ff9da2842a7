#!/usr/bin/env bash
# Create or refresh the project environment in .venv/ (Python 3.10 + the locked dependencies).
# Idempotent: a second run with an unchanged uv.lock does nothing but check.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python310() {
    if [ -n "${SPIKINGBERT_PYTHON:-}" ] && [ -x "$SPIKINGBERT_PYTHON" ]; then echo "$SPIKINGBERT_PYTHON"; return; fi
    if command -v pyenv >/dev/null 2>&1; then
        local p; p="$(pyenv root)/versions/3.10.13/bin/python3.10"
        if [ -x "$p" ]; then echo "$p"; return; fi
        p=$(ls -d "$(pyenv root)"/versions/3.10.*/bin/python3.10 2>/dev/null | tail -n 1 || true)
        if [ -n "$p" ] && [ -x "$p" ]; then echo "$p"; return; fi
    fi
    if command -v python3.10 >/dev/null 2>&1; then command -v python3.10; return; fi
    return 1
}

if ! PY310=$(find_python310); then
    echo "setup_env: Python 3.10 not found (lava-nc 0.10.0 requires 3.10)." >&2
    echo "  Install it with 'pyenv install 3.10.13' or point SPIKINGBERT_PYTHON at a python3.10." >&2
    exit 1
fi

if ! command -v uv >/dev/null 2>&1; then
    echo "setup_env: installing uv (pip install uv)" >&2
    python3 -m pip install --quiet uv || { echo "setup_env: could not install uv" >&2; exit 1; }
fi

export UV_PYTHON="$PY310"
# --frozen: install exactly what uv.lock says (torch 2.14.1, lava-nc 0.10.0, lava-dl 0.6.0 with overridden pins)
uv sync --frozen --quiet
if [ ! -x .venv/bin/spikingbert ]; then
    echo "setup_env: .venv/bin/spikingbert missing after uv sync" >&2
    exit 1
fi
