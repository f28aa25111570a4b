"""The peer's side of a cell: Keras 3 `model.fit` of the same network, timed in windows.

One `fit` call per measurement, with `steps_per_epoch` set to the window's steps, so
each Keras epoch is one window, timed at its end by a callback that has no per-batch
hooks (Keras keeps its asynchronous dispatch; it syncs at each epoch end anyway to
read the metrics, as ours reads each dispatch's loss). The images are a whole number
of windows, so no window runs short at the end of a pass over the data.
"""

import time

from benchmarks import keras_nets
from benchmarks import method
from benchmarks import workers


def setup(spec: dict):
  """(measure, info) of the Keras worker for the cell `spec` (plan.Cell.spec)."""
  t0 = time.perf_counter()
  tf, keras = keras_nets.import_keras()
  import numpy as np  # pylint: disable=g-import-not-at-top
  images, labels = workers.random_data(spec["num_images"], spec["image_shape"],
                                       spec["num_classes"])
  x = images.astype(np.float32) / np.float32(255.0)
  nets = {}  # (steps_per_execution, jit_compile) -> compiled model

  def measure(steps_per_execution: int, jit_compile, tolerance=None,
              max_windows=None) -> dict:
    if spec["window_steps"] % steps_per_execution:
      raise ValueError(f"steps_per_execution={steps_per_execution} does not divide "
                       f"window_steps={spec['window_steps']}.")
    key = (steps_per_execution, jit_compile)
    if key not in nets:
      keras.utils.set_random_seed(0)
      nets[key] = keras_nets.build(spec["model"], spec["image_shape"],
                                   spec["num_classes"], steps_per_execution,
                                   jit_compile, **(spec.get("model_kwargs") or {}))
    net = nets[key]
    steady = method.SteadyState(tolerance or spec["tolerance"],
                                max_windows or spec["max_windows"])
    images_per_window = spec["window_steps"] * spec["batch_size"]

    class Windows(keras.callbacks.Callback):
      def on_epoch_begin(self, epoch, logs=None):
        if epoch == 0:
          self.start = time.perf_counter()

      def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        if steady.add(images_per_window, now - self.start):
          self.model.stop_training = True
        self.start = now

    net.fit(x, labels, batch_size=spec["batch_size"], epochs=steady.max_windows,
            steps_per_epoch=spec["window_steps"], verbose=0, callbacks=[Windows()])
    return {**steady.result(), "steps_per_execution": steps_per_execution,
            "jit_compile": jit_compile, "jit_compile_resolved": bool(net.jit_compile),
            "peak_rss_mb": method.peak_rss_mb()}

  info = {"tensorflow": tf.__version__, "keras": keras.__version__,
          "setup_sec": time.perf_counter() - t0,
          "params": keras_nets.trainable_parameters(
              keras_nets.build(spec["model"], spec["image_shape"], spec["num_classes"],
                               **(spec.get("model_kwargs") or {})))}
  return measure, info
