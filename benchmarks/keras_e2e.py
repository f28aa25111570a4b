"""The Keras tutorial's script (tensorflow.org/tutorials/images/cnn) on the bench's data.

  python -m benchmarks.keras_e2e --data ARRAYS.npz --epochs 5 [best settings]

As shipped: images `/ 255.0` (float64), `model.fit(x, y, epochs=...,
validation_data=(test images, test labels))` with every other argument at its default
(batch 32, steps_per_execution 1, jit_compile "auto"). The tutorial then calls
`model.evaluate` on the test split once more; that is left out, so that both sides
evaluate the test split exactly once per epoch. The test accuracy printed is the
last epoch's. Imports no JAX.
"""

import argparse
import sys

from benchmarks import keras_nets

EVENT = "BENCH_EVENT "


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--data", required=True, help=".npz of x_train, y_train, x_test, "
                      "y_test (uint8 images, integer labels).")
  parser.add_argument("--epochs", type=int, default=5)
  parser.add_argument("--float32", action="store_true", help="float32 inputs.")
  parser.add_argument("--steps-per-execution", type=int, default=1)
  parser.add_argument("--jit-compile", default="auto", choices=["auto", "True", "False"])
  parser.add_argument("--validation-batch-size", type=int, default=None)
  args = parser.parse_args(argv)
  keras_nets.import_keras()
  import numpy as np  # pylint: disable=g-import-not-at-top
  with np.load(args.data) as data:
    (x_train, y_train), (x_test, y_test) = ((data["x_train"], data["y_train"]),
                                            (data["x_test"], data["y_test"]))
  if args.float32:
    x_train = x_train.astype(np.float32) / np.float32(255.0)
    x_test = x_test.astype(np.float32) / np.float32(255.0)
  else:
    x_train, x_test = x_train / 255.0, x_test / 255.0
  jit = {"auto": "auto", "True": True, "False": False}[args.jit_compile]
  model = keras_nets.build("seed_cnn", x_train.shape[1:], int(y_train.max()) + 1,
                           args.steps_per_execution, jit)
  print(EVENT + "fit", flush=True)
  history = model.fit(x_train, y_train, epochs=args.epochs, verbose=0,
                      validation_data=(x_test, y_test),
                      validation_batch_size=args.validation_batch_size)
  print(f"{EVENT}final test accuracy {history.history['val_accuracy'][-1]:.4f}",
        flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
