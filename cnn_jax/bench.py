"""Speed benchmark: our tutorial model against the tutorial's own Keras model, same CPU.

  python -m cnn_jax.bench [--out bench_results/bench.json] [--quick] [--data-dir DIR]

Steady state: both frameworks train the tutorial network (Conv 32 3x3 -> MaxPool 2x2 ->
Dense 64 -> Dense 10, Adam 1e-3) on the same random 28x28x1 uint8 images / 255, at
batch 32 and 128; ours through `train.train_steps` on device-resident data as the runner
does. Each measurement runs in its own subprocess, so peak memory (ru_maxrss) is its own.
End to end: the whole 5-epoch tutorial job of each framework as a subprocess, from
process start to final test accuracy, on Fashion-MNIST when it is prepared in the data
dir, else on `synthetic_mnist` (same sizes, random).
VGG-BN (`--vgg`, on by default): the same steady-state measurement for the VGG-BN model
against the same network in Keras, and against our model built on XLA's native
convolution (`nn.Conv`), whose gradients XLA:CPU runs far slower inside `lax.scan`.
"""

import argparse
import functools
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
LEARNING_RATE = 1e-3
STEPS_PER_DISPATCH = 50  # As experiments/seed_cnn.py.
EVAL_BATCH = 1000
E2E_EPOCHS = 5
E2E_BATCH = 32
RESULT_PREFIX = "BENCH_RESULT "
# VGG-BN rows: batch 128 as experiments/vgg_bn_fashion_mnist.py. Fewer images for
# the XLA-convolution model, which trains at a few percent of the speed of ours.
VGG_BATCH, VGG_IMAGES, VGG_XLA_CONV_IMAGES = 128, 12_800, 2_560


def random_data(num_images: int, seed: int = 0):
  """The benchmark's images (uint8 [N, 28, 28, 1]) and labels (int32 [N])."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_images, *IMAGE_SHAPE), dtype=np.uint8)
  return images, rng.integers(0, NUM_CLASSES, num_images).astype(np.int32)


def window_rates(times: list[float], images_per_step: int, warmup_steps: int,
                 windows: int) -> list[float]:
  """Images/s of `windows` equal windows of steps after `warmup_steps`.

  Args:
    times: times[i] is when step i ended (a step may stand for a chunk of steps).
    images_per_step: images per entry of `times`.
    warmup_steps: entries skipped before the first window.
    windows: how many windows to split the rest into.
  """
  steps = (len(times) - 1 - warmup_steps) // windows
  if steps < 1:
    raise ValueError(f"{len(times)} steps are too few for {windows} windows after "
                     f"{warmup_steps} warm-up steps; give more images.")
  start = warmup_steps
  rates = []
  for _ in range(windows):
    rates.append(steps * images_per_step / (times[start + steps] - times[start]))
    start += steps
  return rates


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def jax_worker(batch_size: int, num_images: int, windows: int, model: str = "seed_cnn",
               conv: str = "fast") -> dict:
  """Steady-state training and eval speed of our `model`, as the runner runs it.

  conv="xla" builds vgg_bn on `nn.Conv` (XLA's native convolution) instead.
  """
  from cnn_jax import xla_flags  # pylint: disable=g-import-not-at-top
  xla_flags.set_default_flags()
  import jax  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from cnn_jax import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  from cnn_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  from cnn_jax.data import batching, in_memory, preprocess  # pylint: disable=g-import-not-at-top

  t_start = time.perf_counter()
  mesh = mesh_lib.make_mesh()
  split = in_memory.put_split(*random_data(num_images), mesh)
  net = models.build_model(model, NUM_CLASSES,
                            **({"conv": nn.Conv} if conv == "xla" else {}))
  state = jax.jit(functools.partial(
      train_lib.create_train_state, net, image_shape=IMAGE_SHAPE,
      tx=optax.adam(LEARNING_RATE)))(jax.random.key(0))
  sharding = mesh_lib.batch_sharding(mesh)
  train_chunk = jax.jit(functools.partial(
      train_lib.train_steps, preprocess=preprocess.scale_to_unit,
      batch_sharding=sharding), donate_argnums=0)
  # Host indices: slicing a device array at a new offset would compile a slice each
  # chunk, which the runner pays only in its first epoch.
  order = split.rows[batching.epoch_order(jax.random.key(1), 0, num_images, batch_size)]
  # Fewer steps per dispatch only when the images are too few for the windows.
  chunk = max(1, min(STEPS_PER_DISPATCH, order.shape[0] // (windows + 1)))
  t0 = time.perf_counter()
  times = [t0]
  for pos in range(0, order.shape[0] - chunk + 1, chunk):
    state, sums = train_chunk(state, split.arrays, order[pos:pos + chunk])
    float(sums["loss"])  # Waits, as the runner does after each chunk.
    times.append(time.perf_counter())
  first = times[1] - t0
  rates = window_rates(times[1:], chunk * batch_size, 0, windows)

  evaluate = jax.jit(functools.partial(
      train_lib.evaluate, preprocess=preprocess.scale_to_unit, batch_sharding=sharding))
  num_eval = min(10_000, num_images)
  idx, mask = batching.eval_order(num_eval, min(EVAL_BATCH, num_eval))
  eval_times = []
  for _ in range(4):
    t = time.perf_counter()
    float(evaluate(state, split.arrays, split.rows[idx], mask)["count"])
    eval_times.append(time.perf_counter() - t)
  return {
      "images_per_sec": statistics.median(rates), "window_images_per_sec": rates,
      "first_step_sec": first, "setup_sec": t0 - t_start,
      "eval_images_per_sec": num_eval / statistics.median(eval_times[1:]),
      "peak_rss_mb": peak_rss_mb(), "steps_per_dispatch": chunk,
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "jax": jax.__version__,
      "model": model, "conv": conv,
  }


def _keras_vgg_layers(keras):
  """models/vgg.py's VGGBN with its defaults, in Keras (871,082 trainable parameters)."""
  layers = []
  for width in (32, 64):
    for _ in range(2):
      layers += [keras.layers.Conv2D(width, (3, 3), padding="same", use_bias=False),
                 keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
                 keras.layers.ReLU()]
    layers += [keras.layers.MaxPooling2D((2, 2)), keras.layers.Dropout(0.2)]
  return layers + [
      keras.layers.Flatten(), keras.layers.Dense(256, use_bias=False),
      keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5), keras.layers.ReLU(),
      keras.layers.Dropout(0.3), keras.layers.Dense(NUM_CLASSES)]


def keras_model(model: str = "seed_cnn"):
  """The tutorial's Keras model (or VGG-BN), compiled as the tutorial does."""
  import keras  # pylint: disable=g-import-not-at-top
  if model == "vgg_bn":
    layers = _keras_vgg_layers(keras)
  else:
    layers = [
        keras.layers.Conv2D(32, (3, 3), activation="relu"),
        keras.layers.MaxPooling2D((2, 2)),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(NUM_CLASSES),
    ]
  model = keras.Sequential([keras.Input(IMAGE_SHAPE), *layers])
  model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  return model


def _import_keras():
  os.environ["KERAS_BACKEND"] = "tensorflow"
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  import keras  # pylint: disable=g-import-not-at-top
  return tf, keras


def keras_worker(batch_size: int, num_images: int, windows: int, model: str = "seed_cnn",
                 conv: str = "fast") -> dict:
  """Steady-state training speed of the tutorial's Keras model (`model.fit`)."""
  del conv  # Keras has one convolution.
  tf, keras = _import_keras()
  images, labels = random_data(num_images)
  x = images.astype("float32") / 255.0
  net = keras_model(model)

  class StepTimes(keras.callbacks.Callback):
    def __init__(self):
      super().__init__()
      self.times = []

    def on_train_batch_end(self, batch, logs=None):
      self.times.append(time.perf_counter())

  recorder = StepTimes()
  t0 = time.perf_counter()
  net.fit(x, labels, batch_size=batch_size, epochs=1, verbose=0, callbacks=[recorder])
  steps = len(recorder.times)
  warmup = max(1, steps // 20)
  rates = window_rates(recorder.times, batch_size, warmup, windows)
  return {
      "images_per_sec": statistics.median(rates), "window_images_per_sec": rates,
      "first_step_sec": recorder.times[0] - t0, "peak_rss_mb": peak_rss_mb(),
      "tensorflow": tf.__version__, "keras": keras.__version__, "model": model,
      "trainable_parameters": sum(int(w.numpy().size) for w in net.trainable_weights),
  }


def keras_e2e_worker(dataset: str, data_dir: str | None, epochs: int) -> dict:
  """The tutorial's whole Keras job: load, scale, fit, evaluate."""
  _, _ = _import_keras()
  from cnn_jax import data  # pylint: disable=g-import-not-at-top
  builder = data.source.prepared_builder(dataset, data_dir)
  (x_train, y_train), (x_test, y_test) = (data.read_split(builder, s)
                                          for s in ("train", "test"))
  model = keras_model()
  model.fit(x_train / 255.0, y_train, batch_size=E2E_BATCH, epochs=epochs, verbose=0)
  _, accuracy = model.evaluate(x_test / 255.0, y_test, verbose=0)
  return {"test_accuracy": float(accuracy), "peak_rss_mb": peak_rss_mb()}


WORKERS = {"jax": jax_worker, "keras": keras_worker}


def run_worker(args: list[str], env=None) -> dict:
  """Runs `python -m cnn_jax.bench --worker ...` and returns its result."""
  proc = subprocess.run([sys.executable, "-m", "cnn_jax.bench", *args], env=env,
                        capture_output=True, text=True, check=False)
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith(RESULT_PREFIX):
      return json.loads(line[len(RESULT_PREFIX):])
  raise RuntimeError(f"Benchmark worker {args} failed (exit {proc.returncode}):\n"
                     f"{proc.stderr[-3000:]}")


def e2e_dataset(data_dir: str | None) -> str:
  """fashion_mnist when prepared in `data_dir`, else synthetic_mnist.

  Either is made readable (ArrayRecord, decoded cache) here, outside the timing, as
  `./run.sh prepare` leaves it.
  """
  from cnn_jax import prepare  # pylint: disable=g-import-not-at-top
  from cnn_jax.data import source  # pylint: disable=g-import-not-at-top
  name = ("fashion_mnist" if source.open_prepared("fashion_mnist", data_dir) is not None
          else "synthetic_mnist")
  prepare.make_readable(name, data_dir)
  return name


def run_e2e(data_dir: str | None, epochs: int) -> dict:
  """Times both frameworks' whole tutorial jobs as subprocesses."""
  from cnn_jax import xla_flags  # pylint: disable=g-import-not-at-top
  dataset = e2e_dataset(data_dir)
  env = dict(os.environ)
  xla_flags.set_default_flags(env)
  extra = [f"--config.data_dir={data_dir}"] if data_dir else []
  with tempfile.TemporaryDirectory(prefix="cnn_jax_bench_") as workdir:
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cnn_jax.main", "train", "--config",
         "experiments/seed_cnn.py", "--workdir", workdir, f"--config.dataset={dataset}",
         f"--config.num_epochs={epochs}", *extra],
        env=env, capture_output=True, text=True, check=False)
    ours_sec = time.perf_counter() - t
  found = re.search(r"final test accuracy: ([0-9.]+)", proc.stdout + proc.stderr)
  loaded = re.search(r"data loaded in ([0-9.]+) s", proc.stdout)
  if proc.returncode or not found or not loaded:
    raise RuntimeError(f"Our end-to-end run failed (exit {proc.returncode}):\n"
                       f"{(proc.stdout + proc.stderr)[-3000:]}")
  t = time.perf_counter()
  keras = run_worker(["--worker", "keras_e2e", "--dataset", dataset, "--epochs",
                      str(epochs), *(["--data-dir", data_dir] if data_dir else [])])
  keras_sec = time.perf_counter() - t
  return {
      "dataset": dataset, "epochs": epochs, "batch_size": E2E_BATCH,
      "ours": {"seconds": ours_sec, "test_accuracy": float(found.group(1)),
               "data_load_sec": float(loaded.group(1))},
      "keras": {"seconds": keras_sec, **keras},
      "speedup": keras_sec / ours_sec,
  }


def machine() -> dict:
  model = platform.processor() or platform.machine()
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"Model name:\s*(.+)", lscpu)
    model = found.group(1).strip() if found else model
  except OSError:
    pass
  return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
          "load_average": os.getloadavg()}


def vgg_row(windows: int) -> dict:
  """VGG-BN at VGG_BATCH: ours, Keras, and ours on XLA's native convolution."""
  def worker(name, images, windows, *extra):
    return run_worker(["--worker", name, "--model", "vgg_bn", "--batch-size",
                       str(VGG_BATCH), "--images", str(images), "--windows",
                       str(windows), *extra])
  row = {"model": "vgg_bn", "batch_size": VGG_BATCH,
         "ours": worker("jax", VGG_IMAGES, windows),
         "keras": worker("keras", VGG_IMAGES, windows),
         "xla_conv": worker("jax", VGG_XLA_CONV_IMAGES, 1, "--conv", "xla")}
  row["ratio"] = row["ours"]["images_per_sec"] / row["keras"]["images_per_sec"]
  row["ratio_vs_xla_conv"] = (row["ours"]["images_per_sec"]
                              / row["xla_conv"]["images_per_sec"])
  return row


def benchmark(batch_sizes, num_images: int, windows: int, e2e: bool,
              data_dir: str | None = None, vgg: bool = False) -> dict:
  """All measurements; see the module docstring."""
  results = {"machine": machine(), "num_images": num_images, "windows": windows,
             "steady_state": []}
  for batch_size in batch_sizes:
    row = {"batch_size": batch_size}
    for name in ("ours", "keras"):
      worker = "jax" if name == "ours" else "keras"
      row[name] = run_worker(["--worker", worker, "--batch-size", str(batch_size),
                              "--images", str(num_images), "--windows", str(windows)])
    row["ratio"] = row["ours"]["images_per_sec"] / row["keras"]["images_per_sec"]
    results["steady_state"].append(row)
  if vgg:
    results["vgg_bn"] = vgg_row(windows)
  if e2e:
    results["end_to_end"] = run_e2e(data_dir, E2E_EPOCHS)
  results["machine"]["load_average_after"] = os.getloadavg()
  return results


def table(results: dict) -> str:
  """The results as a plain-text table."""
  lines = [f"{results['machine']['cpu']}, {results['machine']['cores']} cores; "
           f"{results['num_images']} images, median of {results['windows']} windows",
           f"{'batch':>5} {'ours img/s':>11} {'keras img/s':>12} {'ratio':>6} "
           f"{'ours 1st s':>10} {'keras 1st s':>11} {'ours MB':>8} {'keras MB':>9} "
           f"{'ours eval img/s':>15}"]
  for row in results["steady_state"]:
    o, k = row["ours"], row["keras"]
    lines.append(
        f"{row['batch_size']:>5} {o['images_per_sec']:>11,.0f} "
        f"{k['images_per_sec']:>12,.0f} {row['ratio']:>6.2f} {o['first_step_sec']:>10.2f} "
        f"{k['first_step_sec']:>11.2f} {o['peak_rss_mb']:>8.0f} {k['peak_rss_mb']:>9.0f} "
        f"{o['eval_images_per_sec']:>15,.0f}")
  vgg = results.get("vgg_bn")
  if vgg:
    o, k, x = vgg["ours"], vgg["keras"], vgg["xla_conv"]
    lines.append(
        f"vgg_bn, batch {vgg['batch_size']}: ours {o['images_per_sec']:,.0f} img/s, "
        f"keras {k['images_per_sec']:,.0f} img/s (ours/keras {vgg['ratio']:.2f}), "
        f"ours on XLA's convolution {x['images_per_sec']:,.1f} img/s "
        f"(ours {vgg['ratio_vs_xla_conv']:.1f}x faster); peak MB ours "
        f"{o['peak_rss_mb']:.0f}, keras {k['peak_rss_mb']:.0f}")
  e2e = results.get("end_to_end")
  if e2e:
    lines.append(
        f"end to end, {e2e['epochs']} epochs on {e2e['dataset']}: ours "
        f"{e2e['ours']['seconds']:.1f} s (test accuracy {e2e['ours']['test_accuracy']:.4f}, "
        f"data loaded in {e2e['ours']['data_load_sec']:.2f} s), "
        f"keras {e2e['keras']['seconds']:.1f} s (test accuracy "
        f"{e2e['keras']['test_accuracy']:.4f}); keras/ours {e2e['speedup']:.2f}x")
  return "\n".join(lines)


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m cnn_jax.bench", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="bench_results/bench.json",
                      help="JSON file for the results.")
  parser.add_argument("--quick", action="store_true",
                      help="8,000 images, 3 windows, no end-to-end runs (a smoke test).")
  parser.add_argument("--batch-sizes", default="32,128")
  parser.add_argument("--images", type=int, default=None,
                      help="Training images per measurement (default 60,000).")
  parser.add_argument("--windows", type=int, default=None,
                      help="Timed windows per measurement (default 5).")
  parser.add_argument("--no-e2e", action="store_true", help="Skip the end-to-end runs.")
  parser.add_argument("--no-vgg", action="store_true",
                      help="Skip the VGG-BN rows (also skipped by --quick).")
  parser.add_argument("--data-dir", default=None, help="TFDS data dir (end-to-end).")
  # Internal: one measurement in this process.
  parser.add_argument("--worker", choices=[*WORKERS, "keras_e2e"], help=argparse.SUPPRESS)
  parser.add_argument("--batch-size", type=int, default=32, help=argparse.SUPPRESS)
  parser.add_argument("--dataset", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--model", default="seed_cnn", choices=["seed_cnn", "vgg_bn"],
                      help=argparse.SUPPRESS)
  parser.add_argument("--conv", default="fast", choices=["fast", "xla"],
                      help=argparse.SUPPRESS)
  parser.add_argument("--epochs", type=int, default=E2E_EPOCHS, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  num_images = args.images or (8_000 if args.quick else 60_000)
  windows = args.windows or (3 if args.quick else 5)
  if args.worker == "keras_e2e":
    result = keras_e2e_worker(args.dataset, args.data_dir, args.epochs)
  elif args.worker:
    result = WORKERS[args.worker](args.batch_size, num_images, windows,
                                  model=args.model, conv=args.conv)
  if args.worker:
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0
  batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  results = benchmark(batch_sizes, num_images, windows,
                      e2e=not (args.quick or args.no_e2e), data_dir=args.data_dir,
                      vgg=not (args.quick or args.no_vgg))
  print(table(results))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
