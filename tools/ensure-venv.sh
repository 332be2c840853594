#!/usr/bin/env bash
# Create (or reuse) the project's Python 3.10 virtual environment in .venv.
#
# Reused while pyproject.toml, setup.py, tools/constraints-py310.txt and this script are unchanged (a hash
# of the four is kept in .venv/.lnm-deploy-stamp); rebuilt from nothing otherwise.
# Python 3.10 is required because lava-nc 0.10 installs only there. Override with PYTHON310=/path.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STAMP="$VENV/.lnm-deploy-stamp"
want=$(cat pyproject.toml setup.py tools/constraints-py310.txt tools/ensure-venv.sh | sha256sum | cut -d' ' -f1)

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] \
   && "$VENV/bin/python" -c 'import lnm_deploy' 2>/dev/null; then
  exit 0
fi

is_py310() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; }

find_py310() {
  local c root
  for c in "${PYTHON310:-}" python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10; do
    [[ -n "$c" ]] && command -v "$c" >/dev/null 2>&1 && is_py310 "$c" && { command -v "$c"; return 0; }
  done
  # pyenv's shim for python3.10 fails unless pyenv is told to use it: look at its versions instead.
  root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
  for c in $(ls -d "$root"/versions/3.10.*/bin/python3.10 2>/dev/null | sort -V -r); do
    is_py310 "$c" && { echo "$c"; return 0; }
  done
  return 1
}

if ! PY=$(find_py310); then
  echo "error: lnm-deploy needs Python 3.10 (lava-nc 0.10 installs only there), and none was found." >&2
  echo "       Install it (e.g. 'pyenv install 3.10' or your distribution's python3.10 with venv)," >&2
  echo "       or point PYTHON310 at a python3.10 executable." >&2
  exit 1
fi

# Only ever remove a venv directory this script made: never follow a symlink (rm -rf "link/"
# would empty the directory it points to) and never remove a directory that is not a venv.
VENV=${VENV%/}
if [[ -L "$VENV" ]]; then
  echo "error: $VENV is a symbolic link; it is out of date and will not be rebuilt through the link." >&2
  echo "       Remove the link (or point VENV at a real directory) and run again." >&2
  exit 1
fi
if [[ -e "$VENV" && ! -f "$VENV/pyvenv.cfg" ]]; then
  echo "error: $VENV exists and is not a Python venv; it is not removed. Move it away or set VENV." >&2
  exit 1
fi
echo "==> creating $VENV with $PY ($("$PY" --version 2>&1))"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
echo "==> installing lnm-deploy with torch, lava, onnx, fast, distributed and dev extras (a few minutes the first time)"
"$VENV/bin/python" -m pip install --quiet --progress-bar off \
  -c tools/constraints-py310.txt -e ".[torch,lava,onnx,plots,fast,distributed,dev]"
# sinabs 2.0 declares samna (hardware tools whose PyPI package runs pip against another index when
# imported, failing offline): install sinabs without its dependencies; its real ones (numpy, torch,
# nir, nirtorch, pbr) come with the dev extra above.
"$VENV/bin/python" -m pip install --quiet --progress-bar off --no-deps -c tools/constraints-py310.txt "sinabs==2.0.3"
"$VENV/bin/python" -c 'import lnm_deploy, torch, lava, nir, snntorch, norse, numba, safetensors, ray, sinabs.nir, rockpool' 2>/dev/null \
  || { echo "error: the environment in $VENV does not import; see pip's output above" >&2; exit 1; }
"$VENV/bin/python" -c 'import sys, sinabs.nir; sys.exit("samna" in sys.modules)' \
  || { echo "error: importing sinabs imported samna" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "==> $VENV ready"
