"""The persistent compilation cache: on by default, per kind of CPU, the environment's
choice first, and a second run that loads every program instead of compiling it."""

import os
import subprocess
import sys

from cnn_jax import compile_cache, report, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpuinfo(tmp_path, name, flags, cores=2):
  path = tmp_path / name
  path.write_text("".join(f"processor\t: {i}\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n\n"
                          for i in range(cores)))
  return str(path)


def test_one_cache_folder_per_kind_of_cpu(tmp_path):
  avx512 = compile_cache.host_tag(_cpuinfo(tmp_path, "a", "fpu sse avx2 avx512f"))
  assert avx512 == compile_cache.host_tag(_cpuinfo(tmp_path, "b", "fpu sse avx2 avx512f", 8))
  assert avx512 != compile_cache.host_tag(_cpuinfo(tmp_path, "c", "fpu sse avx2"))
  assert compile_cache.default_dir({"XDG_CACHE_HOME": "/x"}) == os.path.join(
      "/x", "cnn_jax", "jax", compile_cache.host_tag())


def test_the_environment_chooses_first(tmp_path):
  mine = str(tmp_path / "mine")
  env = {"JAX_COMPILATION_CACHE_DIR": mine}
  assert compile_cache.set_default_env(env) == mine
  assert env == {"JAX_COMPILATION_CACHE_DIR": mine,
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.0"}
  env = {"JAX_COMPILATION_CACHE_DIR": mine, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "2"}
  compile_cache.set_default_env(env)
  assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "2"
  env = {"JAX_COMPILATION_CACHE_DIR": ""}
  assert compile_cache.set_default_env(env) is None
  assert env == {"JAX_COMPILATION_CACHE_DIR": ""}  # Off: JAX builds no cache.
  env = {"XDG_CACHE_HOME": str(tmp_path)}
  assert compile_cache.set_default_env(env) == compile_cache.default_dir(env)
  assert env["JAX_COMPILATION_CACHE_DIR"] == compile_cache.default_dir(env)


def test_second_run_loads_every_program_and_trains_the_same(tmp_path, data_dir):
  cache = tmp_path / "cache"
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache)}

  def train(workdir):
    out = subprocess.run(
        [sys.executable, "-m", "cnn_jax.main", "train", "--config", "experiments/seed_cnn.py",
         "--workdir", str(workdir), f"--config.data_dir={data_dir}",
         "--config.train_split=train[:640]", "--config.num_epochs=2",
         "--config.steps_per_dispatch=8"],  # 20 steps an epoch: a shorter last chunk.
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return [{k: v for k, v in r.items() if k not in run.TIMING_KEYS}
            for r in report.read_metrics(str(workdir))]

  first = train(tmp_path / "a")
  written = sorted(os.listdir(cache))
  assert [e for e in written if e.startswith("jit_train_steps")], written
  assert [e for e in written if e.startswith("jit_create_train_state")], written
  second = train(tmp_path / "b")
  assert sorted(os.listdir(cache)) == written  # Every program was found: none written.
  assert second == first
