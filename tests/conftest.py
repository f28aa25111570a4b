"""Shared fixtures: a prepared embedded dataset and small configs."""

import os
import sys

import hypothesis
import pytest

# Property-based tests (hypothesis): a small example budget in CI, a larger one on
# demand (HYPOTHESIS_PROFILE=thorough ./run.sh test tests/test_cpu.py). Each example
# compiles its programs afresh, seconds each, so no deadline.
hypothesis.settings.register_profile("ci", max_examples=12, deadline=None,
                                     derandomize=True, print_blob=True)
hypothesis.settings.register_profile("thorough", max_examples=200, deadline=None,
                                     print_blob=True)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # experiments/ is imported as a package by config files.
  sys.path.insert(0, ROOT)


@pytest.fixture(scope="session", autouse=True)
def _temp_files_inside_pytest_tmp(tmp_path_factory):
  """Temporary files of the tests, TFDS's and subprocesses' included, go under pytest's
  own temporary folder (which pytest prunes), not loose into /tmp."""
  import tempfile  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp("tempdir"))
  old_env, old_dir = os.environ.get("TMPDIR"), tempfile.tempdir
  os.environ["TMPDIR"], tempfile.tempdir = path, path
  yield
  tempfile.tempdir = old_dir
  if old_env is None:
    os.environ.pop("TMPDIR", None)
  else:
    os.environ["TMPDIR"] = old_env


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache_of_the_session(tmp_path_factory):
  """The runs the tests start share one compilation cache, in pytest's temporary
  folder: a program compiled by one is loaded by the next, and nothing is written to
  the user's own cache (compile_cache.default_dir)."""
  old = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
  yield
  if old is None:
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
  else:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A TFDS data_dir with the embedded mnist_5k prepared once for the session."""
  path = str(tmp_path_factory.mktemp("tfds"))
  from cnn_jax.data import source
  source.get_builder("mnist_5k", path)
  return path


@pytest.fixture
def seed_config(data_dir):
  """The tutorial config on mnist_5k, shortened, unlocked for the test to edit."""
  from experiments import seed_cnn
  config = seed_cnn.get_config()
  config.data_dir = data_dir
  config.num_epochs = 1
  return config


@pytest.fixture(scope="session")
def trained_run(data_dir, tmp_path_factory):
  """A finished 2-epoch run with a 10% validation hold-out, selecting on validation:
  (config, workdir, records)."""
  from cnn_jax import report, run
  from experiments import seed_cnn
  config = seed_cnn.get_config()
  config.data_dir = data_dir
  config.train_split = "train[:2000]"
  config.num_epochs = 2
  config.validation_fraction = 0.1
  config.best_metric = "validation_accuracy"
  config.keep_best_checkpoints = 1
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  run.train_and_evaluate(config, workdir)
  return config, workdir, report.read_metrics(workdir)


def run_command(*args, cwd=ROOT, env=None):
  """`python -m cnn_jax.main ARGS` in `cwd`: the finished process (text output).
  `env`: variables to set, or to remove where the value is None."""
  import subprocess  # pylint: disable=g-import-not-at-top
  env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
  return subprocess.run([sys.executable, "-m", "cnn_jax.main", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=600,
                        env={k: v for k, v in env.items() if v is not None})


@pytest.fixture
def cli():
  """The command line as a user runs it: cli("train", "--config", ...)."""
  return run_command
