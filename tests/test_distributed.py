"""Many processes, one program: 2 processes x 2 simulated CPU devices stand in for two
hosts (jax.distributed with a coordinator on 127.0.0.1 and gloo collectives)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from cnn_jax import launch, report
from tests.test_resume import (ROOT, assert_trees_equal, final_params, learning_metrics,
                               wait_for_checkpoint)

# 640 training images, global batch 64: 10 steps per epoch, 2 epochs, a checkpoint every
# 5 steps.
ARGS = ("--config.train_split=train[:640]", "--config.batch_size=64",
        "--config.num_epochs=2", "--config.steps_per_dispatch=5",
        "--config.checkpoint_every_steps=5")


def command(workdir, data_dir, *extra):
  return [sys.executable, "-m", "cnn_jax.main", "train", "--config",
          "experiments/seed_cnn.py", f"--workdir={workdir}",
          f"--config.data_dir={data_dir}", *ARGS, *extra]


def env(devices):
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def run(cmd, devices):
  out = subprocess.run(cmd, cwd=ROOT, env=env(devices), capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout


@pytest.fixture(scope="module")
def two_process_run(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("mp") / "run"
  out = run(command(workdir, data_dir, "--local_processes=2"), devices=2)
  return workdir, out


def test_two_processes_match_one_process_with_four_devices(two_process_run, data_dir,
                                                           tmp_path):
  workdir, out = two_process_run
  assert "[p0] seed_cnn on mnist_5k: 640 train / 1000 test" in out
  assert "4 device(s)" in out
  # Only process 0 reports and writes metrics.
  assert out.count("epoch   2  step      20") == 1 and "[p1] epoch" not in out
  assert [r["step"] for r in report.read_metrics(workdir)] == [10, 20]
  single = tmp_path / "single"
  run(command(single, data_dir), devices=4)
  # Equal up to float reduction order (gloo across processes vs one process): within a
  # tenth of one Adam step (learning rate 1e-3) after 20 steps.
  assert_trees_equal(final_params(workdir)[1]["params"], final_params(single)[1]["params"],
                     exact=False, atol=1e-4)
  for got, want in zip(learning_metrics(workdir), learning_metrics(single), strict=True):
    assert got == pytest.approx(want, rel=1e-3, abs=2e-3)


def test_two_process_run_killed_and_resumed_continues_correctly(two_process_run, data_dir,
                                                                tmp_path):
  reference, _ = two_process_run
  workdir = tmp_path / "killed"
  proc = subprocess.Popen(command(workdir, data_dir, "--local_processes=2"), cwd=ROOT,
                          env=env(2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  wait_for_checkpoint(workdir, 5, proc)
  os.killpg(proc.pid, signal.SIGKILL)  # The launcher and both processes at once.
  proc.wait()
  out = run(command(workdir, data_dir, "--local_processes=2"), devices=2)
  resumed = int(out.split("[p0] resumed from checkpoint step ")[1].split()[0])
  assert 5 <= resumed < 20  # From a step inside the run, not after it had finished.
  # The same sequence of programs as the uninterrupted 2-process run: bitwise equal.
  assert_trees_equal(final_params(workdir)[1], final_params(reference)[1], exact=True)
  assert learning_metrics(workdir) == learning_metrics(reference)


def test_sigterm_to_one_process_stops_the_whole_job_after_a_save(data_dir, tmp_path):
  workdir = tmp_path / "one_signal"
  proc = subprocess.Popen(command(workdir, data_dir, "--local_processes=2",
                                  "--config.num_epochs=1000"),
                          cwd=ROOT, env=env(2), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    wait_for_checkpoint(workdir, 5, proc)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                              text=True).stdout.split()
    assert len(children) == 2
    os.kill(int(children[1]), signal.SIGTERM)  # Process 1 only.
    out, _ = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 75, out[-3000:]
  saved = {int(line.split("checkpoint of step ")[1].split(";")[0])
           for line in out.splitlines() if "preempted: stopped by" in line}
  assert len(saved) == 1  # Both processes stopped after the same save.
  assert (workdir / "checkpoints" / str(saved.pop())).is_dir()


def test_local_processes_split_the_gpus():
  assert launch.split_devices([], 2) == [None, None]
  assert launch.split_devices(["0", "1", "2", "3"], 2) == ["0,1", "2,3"]
  assert launch.split_devices(["3", "5"], 2) == ["3", "5"]
  with pytest.raises(Exception, match="cannot share this host's 3 GPUs"):
    launch.split_devices(["0", "1", "2"], 2)


def test_a_dead_process_makes_the_other_exit_with_an_error(data_dir, tmp_path):
  workdir = tmp_path / "dead"
  coordinator = f"127.0.0.1:{launch.free_port()}"
  procs = [subprocess.Popen(
      command(workdir, data_dir, "--config.num_epochs=1000", f"--coordinator={coordinator}",
              "--num_processes=2", f"--process_id={i}", "--distributed_timeout=40"),
      cwd=ROOT, env=env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  try:
    wait_for_checkpoint(workdir, 5, procs[0])
    procs[1].kill()
    killed = time.time()
    out, _ = procs[0].communicate(timeout=120)
    waited = time.time() - killed
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert procs[0].returncode != 0
  assert waited < 60, f"the surviving process took {waited:.0f} s to stop"
  assert "another task died" in out or "heartbeat" in out, out[-3000:]


def test_launcher_stops_the_job_when_one_process_fails(data_dir, tmp_path):
  # Process 1 cannot write its workdir (a file stands there): the job fails as a whole.
  blocker = tmp_path / "file"
  blocker.write_text("x")
  started = time.time()
  out = subprocess.run(
      [sys.executable, "-m", "cnn_jax.main", "train", "--config", "experiments/seed_cnn.py",
       f"--workdir={blocker}/run", f"--config.data_dir={data_dir}", "--local_processes=2",
       "--distributed_timeout=30"],
      cwd=ROOT, env=env(1), capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert "cannot be written" in out.stdout
  assert time.time() - started < 120


def test_cluster_environment_is_detected(monkeypatch):
  for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(var, raising=False)
  assert launch.detected_cluster() is None
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert launch.detected_cluster() is None
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert launch.detected_cluster() == "Slurm"


def test_partial_distributed_flags_are_an_error():
  with pytest.raises(ValueError, match="go together"):
    launch.initialize("127.0.0.1:1234", None, 0)


def test_two_processes_agree_on_a_damaged_checkpoint(two_process_run, data_dir, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  from tests.test_resume import _truncate  # pylint: disable=g-import-not-at-top
  finished, _ = two_process_run
  workdir = tmp_path / "damaged"
  shutil.copytree(finished, workdir)
  _truncate(str(workdir / "checkpoints" / "20"))
  started = time.time()
  out = run(command(workdir, data_dir, "--local_processes=2", "--config.num_epochs=3"),
            devices=2)
  assert time.time() - started < 300  # No deadlock between processes that disagree.
  assert "[p0] checkpoint step 20 is damaged" in out
  assert "[p0] resumed from checkpoint step 15" in out
  assert [r["step"] for r in report.read_metrics(workdir)] == [10, 20, 30]
