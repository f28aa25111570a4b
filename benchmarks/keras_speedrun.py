"""The speedrun recipe in Keras, timed as ours: `./run.sh bench --speedrun` runs it.

  python -m benchmarks.keras_speedrun --data ARRAYS.npz --recipe JSON --seed S
      --epochs E --steps-per-execution K --jit-compile auto|True|False

The recipe (`speedrun_bench.keras_recipe` of the experiment config) as Keras writes
it: the same network (keras_nets, our model's kwargs), images / 255 in float32,
RandomFlip("horizontal") in the model (training only), Adam on the same schedule
(`CosineDecay` with a linear warm-up from 0, as optax's warmup_cosine_decay), label
smoothing in the cross-entropy, the same batch, the moving average of the weights
(`use_ema`, swapped in with `finalize_variable_values` before evaluating) and the
test split evaluated once at the end on the averaged logits of each image and its
mirror image. Prints one line `BENCH_EVENT {json}` with wall-clock times (time.time())
of the start of `fit`, its end and the end of the evaluation, and the accuracy.
Imports no JAX.
"""

import argparse
import json
import math
import sys
import time

from benchmarks import keras_nets

EVENT = "BENCH_EVENT "


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--data", required=True, help=".npz of x_train, y_train, x_test, "
                      "y_test (uint8 images, integer labels).")
  parser.add_argument("--recipe", required=True, help="JSON of the recipe's fields.")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--epochs", type=int, required=True)
  parser.add_argument("--steps-per-execution", type=int, default=1)
  parser.add_argument("--jit-compile", default="auto", choices=["auto", "True", "False"])
  args = parser.parse_args(argv)
  recipe = json.loads(args.recipe)
  _, keras = keras_nets.import_keras()
  import numpy as np  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(args.seed)
  with np.load(args.data) as data:
    x_train = data["x_train"].astype(np.float32) / np.float32(255.0)
    x_test = data["x_test"].astype(np.float32) / np.float32(255.0)
    y_train, y_test = data["y_train"], data["y_test"]
  num_classes = int(y_train.max()) + 1
  batch = recipe["batch_size"]
  steps_per_epoch = math.ceil(len(x_train) / batch)
  total, warmup = steps_per_epoch * args.epochs, round(
      recipe["warmup_epochs"] * steps_per_epoch)
  schedule = keras.optimizers.schedules.CosineDecay(
      0.0, total - warmup, alpha=0.0, warmup_target=recipe["learning_rate"],
      warmup_steps=warmup)
  ema = recipe["ema_decay"]
  optimizer = keras.optimizers.Adam(schedule, use_ema=bool(ema),
                                    ema_momentum=ema or 0.99)
  inputs = keras.Input(x_train.shape[1:])
  x = keras.layers.RandomFlip("horizontal", seed=args.seed)(inputs) if recipe[
      "flip"] else inputs
  outputs = keras_nets.network(recipe["model"])(keras, x, num_classes,
                                                **recipe["model_kwargs"])
  net = keras.Model(inputs, outputs)
  net.compile(optimizer=optimizer,
              loss=keras.losses.CategoricalCrossentropy(
                  from_logits=True, label_smoothing=recipe["label_smoothing"]),
              steps_per_execution=args.steps_per_execution,
              jit_compile={"auto": "auto", "True": True, "False": False}[args.jit_compile])
  fit_start = time.time()
  net.fit(x_train, keras.utils.to_categorical(y_train, num_classes), batch_size=batch,
          epochs=args.epochs, shuffle=True, verbose=0)
  fit_end = time.time()
  if ema:
    optimizer.finalize_variable_values(net.trainable_variables)
  eval_batch = recipe["eval_batch_size"]
  logits = net.predict(x_test, batch_size=eval_batch, verbose=0)
  if recipe["tta"] == "flip":
    logits = (logits + net.predict(x_test[:, :, ::-1, :], batch_size=eval_batch,
                                   verbose=0)) / 2
  accuracy = float(np.mean(np.argmax(logits, -1) == y_test))
  print(EVENT + json.dumps({"fit_start_unix": fit_start, "fit_end_unix": fit_end,
                            "eval_end_unix": time.time(), "test_accuracy": accuracy,
                            "parameters": keras_nets.trainable_parameters(net)}),
        flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
