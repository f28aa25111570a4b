#!/usr/bin/env bash
# One entry point. Creates .venv and installs the project on first use (and again
# whenever pyproject.toml changes), then dispatches:
#   ./run.sh                 train the tutorial model on the embedded dataset
#   ./run.sh test [ARGS]     run the test suite (pytest ARGS)
#   ./run.sh bench [ARGS]    speed benchmark against Keras
#   ./run.sh train|eval|prepare ARGS   the experiment runner (see README.md)
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
stamp="$venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  python=${PYTHON:-$(command -v python3.11 || command -v python3)}
  echo "run.sh: installing into $venv with $python (first use or pyproject.toml changed)" >&2
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e ".[test]"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
py="$venv/bin/python"

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  "")
    exec "$py" -m cnn_jax.main train --config experiments/seed_cnn.py --workdir runs/seed_cnn "$@" ;;
  test)
    exec "$py" -m pytest "$@" ;;
  bench)
    exec "$py" -m cnn_jax.bench "$@" ;;
  *)
    exec "$py" -m cnn_jax.main "$cmd" "$@" ;;
esac
