#!/usr/bin/env bash
# One entry point. Creates .venv and installs the project on first use (and again
# whenever pyproject.toml changes), then dispatches:
#   ./run.sh [FLAGS]         train the tutorial model on the embedded dataset
#   ./run.sh test [ARGS]     run the test suite (pytest ARGS)
#   ./run.sh bench [ARGS]    speed benchmark against Keras
#   ./run.sh train|eval|report|predict|export|prepare ARGS   the experiment runner
# Paths given on the command line are read from the folder you run it in.
set -euo pipefail
root="$(cd "$(dirname "$0")" && pwd)"

venv="$root/.venv"
stamp="$venv/.installed-$(sha1sum "$root/pyproject.toml" | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  python=${PYTHON:-$(command -v python3.11 || command -v python3)}
  echo "run.sh: installing into $venv with $python (first use or pyproject.toml changed)" >&2
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  (cd "$root" && "$venv/bin/python" -m pip install --quiet -e ".[test]")
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
py="$venv/bin/python"
# Experiment configs import their base (`from experiments import seed_cnn`).
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  ""|-*)  # Bare, or flags only (./run.sh --config.num_epochs=1): the main job.
    [ -n "$cmd" ] && set -- "$cmd" "$@"
    exec "$py" -m cnn_jax.main train --config "$root/experiments/seed_cnn.py" \
      --workdir "$root/runs/seed_cnn" "$@" ;;
  test)
    cd "$root" && exec "$py" -m pytest "$@" ;;
  bench)
    cd "$root" && exec "$py" -m benchmarks "$@" ;;
  *)
    exec "$py" -m cnn_jax.main "$cmd" "$@" ;;
esac
