"""Every bad config refused before any work: one line naming the field, the value and
what is allowed; exit status 2; no directory created."""

import os
import subprocess
import sys

import pytest

from cnn_jax import configs
from cnn_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def base():
  from experiments import seed_cnn  # pylint: disable=g-import-not-at-top
  return seed_cnn.get_config()


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, r"config.batch_size=0 is not allowed: expected an integer >= 1"),
    ("batch_size", -32, r"batch_size=-32 .* integer >= 1"),
    ("batch_size", 33, r"batch_size=33 .* a multiple of the 2 devices"),
    ("eval_batch_size", 0, r"eval_batch_size=0 .* integer >= 1"),
    ("num_epochs", 0, r"num_epochs=0 .* integer >= 1"),
    ("num_epochs", -1, r"num_epochs=-1"),
    ("learning_rate", float("inf"), r"learning_rate=inf .* finite number > 0"),
    ("learning_rate", 0.0, r"learning_rate=0.0"),
    ("steps_per_dispatch", 0, r"steps_per_dispatch=0"),
    ("checkpoint_every_steps", -5, r"checkpoint_every_steps=-5 .* integer >= 0"),
    ("keep_checkpoints", 0, r"keep_checkpoints=0 .* integer >= 1"),
    ("keep_best_checkpoints", -1, r"keep_best_checkpoints=-1"),
    ("keep_best_checkpoints", 1, r"keep_best_checkpoints=1 .* without a best_metric"),
    ("best_metric", "foo", r"best_metric='foo' .* keep_best_checkpoints=0"),
    ("input_pipeline", "disk", r"input_pipeline='disk' .* 'in_memory', 'streaming'"),
    ("lr_schedule", "linear", r"lr_schedule='linear' .* 'constant', 'cosine'"),
    ("warmup_epochs", 5, r"warmup_epochs=5.0 .* fewer than num_epochs=5"),
    ("validation_fraction", 1.0, r"validation_fraction=1.0 .* \[0, 1\)"),
    ("data_workers", -1, r"data_workers=-1"),
    ("crop_padding", -2, r"crop_padding=-2"),
    ("on_bad_image", "ignore", r"on_bad_image=.ignore. .* .skip., .error."),
    ("divergence_factor", 0.5, r"divergence_factor=0.5 .* factor > 1"),
    ("model", "resnet9000", r"Unknown model 'resnet9000'"),
    ("dtype", "float16", r"dtype='float16' .* 'float32', 'bfloat16'"),
    ("data_dir", __file__, r"data_dir=.* a directory \(not a file\)"),
    ("model_kwargs", {"hidden": "abc"},
     r"model_kwargs.hidden='abc': model 'seed_cnn' takes an integer there \(default 64\)"),
    ("model_kwargs", {"hidden": 1.5}, r"model_kwargs.hidden=1.5: .* an integer"),
    ("optimizer_kwargs", {"b1": "high"}, r"optimizer_kwargs.b1='high': 'adam' takes a "
                                         r"number there"),
    ("optimizer_kwargs", {"momentum": 0.9}, r"optimizer_kwargs=.* do not fit 'adam'"),
])
def test_bad_fields_name_the_field_value_and_what_is_allowed(field, value, message):
  config = base()
  with config.unlocked():
    config[field] = value
  with pytest.raises(ConfigError, match=message):
    configs.check(config, device_count=2, process_count=1)


def test_combinations_and_nested_fields():
  config = base()
  configs.check(config, device_count=1, process_count=1)  # The tutorial is fine.
  with pytest.raises(ConfigError, match="batch_size=32 .* multiple of the 3 processes"):
    configs.check(config, device_count=1, process_count=3)
  config.model_kwargs = {"hiden": 128}
  with pytest.raises(ConfigError, match="model_kwargs has hiden, which model 'seed_cnn' "
                                        "does not take; its arguments: features, hidden"):
    configs.check(config, 1, 1)
  config = base()
  config.keep_best_checkpoints, config.best_metric = 1, "test_accuracy"
  with pytest.raises(ConfigError, match="selects checkpoints on the test split"):
    configs.check(config, 1, 1)
  config.best_metric = "validation_accuracy"
  with pytest.raises(ConfigError, match="not a metric of this run's evaluators"):
    configs.check(config, 1, 1)  # No validation split: nothing to select on.
  config.validation_fraction = 0.1
  configs.check(config, 1, 1)
  config = base()
  with config.unlocked():
    config.learning_rat = 1e-3
  with pytest.raises(ConfigError, match="unknown field.s. learning_rat"):
    configs.check(config, 1, 1)


def cli(tmp_path, *args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "cnn_jax.main", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "PYTHONPATH": ROOT})


@pytest.mark.parametrize("args, message", [
    (["--config.batch_size=0"], "error: config.batch_size=0 is not allowed"),
    (["--config.nonexistent=1"], "error: --config.nonexistent: the config has no field"),
    (["--config.batch_size=abc"], "error: flag --config.batch_size=abc: invalid literal"),
    (["--config.learning_rate=inf"], "error: config.learning_rate=inf"),
])
def test_command_line_mistakes_are_one_line_errors_before_any_work(tmp_path, args,
                                                                   message):
  out = cli(tmp_path, "train", "--config", "experiments/seed_cnn.py", "--workdir",
            str(tmp_path / "run"), *args)
  assert out.returncode == 2
  assert out.stderr.startswith(message) and "Traceback" not in out.stderr
  assert len(out.stderr.strip().splitlines()) <= 2
  assert not os.path.exists(tmp_path / "run")


def test_missing_config_file_and_empty_workdir(tmp_path):
  out = cli(tmp_path, "train", "--config", "no_such.py", "--workdir", "run", cwd=tmp_path)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert f"--config no_such.py: no such file (relative paths are read from {tmp_path})" \
      in out.stderr
  assert not os.path.exists(tmp_path / "run")
  out = cli(tmp_path, "train", "--config", "experiments/seed_cnn.py", "--workdir=")
  assert out.returncode != 0 and "needs --config and --workdir" in out.stderr


def test_run_sh_reads_paths_from_the_callers_folder(tmp_path):
  # Only the argument handling: a config that does not exist where the user stands.
  (tmp_path / "mine.py").write_text("raise SystemExit('read')\n")
  out = subprocess.run([os.path.join(ROOT, "run.sh"), "train", "--config", "mine.py",
                        "--workdir", "w"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
  assert "read" in out.stderr  # The user's ./mine.py was loaded, not the repo's.


_FINISH = """
import atexit, sys, threading, time
from cnn_jax import main
atexit.register(lambda: print("atexit ran", flush=True))
threading.Thread(target=lambda: (time.sleep(0.3), print("thread done", flush=True))).start()
print("buffered", end="")
code = sys.argv[1]
main._finish(None if code == "none" else int(code) if code.isdigit() else code)
"""


@pytest.mark.parametrize("code, status, stderr", [
    ("none", 0, ""), ("0", 0, ""), ("3", 3, ""), ("no such file", 1, "no such file\n")])
def test_the_command_ends_as_sys_exit_would_less_the_teardown(code, status, stderr):
  """`main._finish`: other threads joined, atexit handlers run, output flushed, the
  status of sys.exit(code)."""
  out = subprocess.run([sys.executable, "-c", _FINISH, code], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == status
  assert out.stdout == "bufferedthread done\natexit ran\n"
  assert out.stderr == stderr


def test_fractional_warmup_overrides_the_tutorial_config():
  """`--config.warmup_epochs=0.5` was refused ('invalid literal for int()'): the
  tutorial declared the field as the integer 0, though fractions are allowed."""
  from experiments import seed_cnn  # pylint: disable=g-import-not-at-top
  config = seed_cnn.get_config()
  config.warmup_epochs = 0.5  # A ConfigDict keeps each field's type.
  configs.check(config, 1, 1)
  assert config.warmup_epochs == 0.5


def test_a_new_field_is_one_declaration(monkeypatch, tmp_path):
  """Issue 28: adding a field is one declaration in the schema (plus the experiments
  that set it): it is then in every config, checked, in the resume fingerprint if
  declared so, and filled in with its legacy value for runs written before it."""
  from cnn_jax import run, schema  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(schema.FIELDS, "stochastic_depth", schema.Field(
      0.0, (lambda v: 0 <= v < 1, "a rate in [0, 1)"), "training", fingerprint=True,
      legacy=0.0))
  (tmp_path / "exp.py").write_text(
      "from experiments import seed_cnn\n"
      "def get_config():\n"
      "  config = seed_cnn.get_config()\n"
      "  config.stochastic_depth = 0.1\n"
      "  return config\n")
  import runpy  # pylint: disable=g-import-not-at-top
  config = runpy.run_path(str(tmp_path / "exp.py"))["get_config"]()
  assert config.stochastic_depth == 0.1
  configs.check(config, 1, 1)
  config.stochastic_depth = 1.5
  with pytest.raises(ConfigError, match=r"stochastic_depth=1.5 is not allowed: "
                                        r"expected a rate in \[0, 1\)"):
    configs.check(config, 1, 1)
  assert "stochastic_depth" in schema.fingerprint_fields()
  assert run.fingerprint_defaults()["stochastic_depth"] == 0.0
  assert schema.with_legacy_defaults({"model": "seed_cnn"})["stochastic_depth"] == 0.0


# Where each section's fields are read.
_CONSUMERS = {
    "data": ("cnn_jax/data", "cnn_jax/run.py"),
    "model": ("cnn_jax/run.py", "cnn_jax/models"),
    "optimizer": ("cnn_jax/run.py", "cnn_jax/optim.py"),
    "training": ("cnn_jax/run.py", "cnn_jax/train.py"),
    "checkpointing": ("cnn_jax/run.py", "cnn_jax/checkpoint.py"),
    "evaluation": ("cnn_jax/run.py", "cnn_jax/evaluators.py"),
}


def test_every_declared_field_reaches_a_consumer_of_its_section():
  import re  # pylint: disable=g-import-not-at-top
  from cnn_jax import schema  # pylint: disable=g-import-not-at-top
  assert set(_CONSUMERS) == set(schema.SECTIONS)
  sources = {}
  for section, paths in _CONSUMERS.items():
    texts = []
    for path in paths:
      path = os.path.join(ROOT, path)
      files = [path] if path.endswith(".py") else [
          os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".py")]
      texts += [open(f).read() for f in files]
    sources[section] = "\n".join(texts)
  unread = [name for name, field in schema.FIELDS.items()
            if not re.search(rf"config\.{name}\b|config\[[\"']{name}[\"']\]",
                             sources[field.section])]
  assert not unread, f"fields no consumer of their section reads: {unread}"


def test_sections_partition_the_fields_and_data_gets_its_own(seed_config):
  from cnn_jax import schema  # pylint: disable=g-import-not-at-top
  sections = {name: schema.section(seed_config, name) for name in schema.SECTIONS}
  assert sorted(k for s in sections.values() for k in s.keys()) == sorted(schema.FIELDS)
  data = sections["data"]
  assert data.dataset == "mnist_5k" and data.batch_size == 32
  assert "learning_rate" not in data and "model" not in data
  with pytest.raises(ValueError, match="Unknown section 'optim'"):
    schema.section(seed_config, "optim")
