"""What the bench measures: the cells of its table and their sizes."""

import dataclasses

NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Cell:
  """One model at one batch size, ours against the same network in Keras.

  Attributes:
    model: a name in models.MODELS and in keras_nets.NETWORKS.
    batch_size: images per step, both sides.
    image_shape: (H, W, C) of the random uint8 images both sides train on (/ 255).
    experiment: the experiments/ config whose steps_per_dispatch ours uses (capped at
      window_steps).
    window_steps: steps per timed window; a multiple of ours' steps per dispatch and
      of every Keras steps_per_execution tried.
    windows_per_pass: windows per pass over the images (sets how many there are).
    steps_per_execution: Keras values tried without XLA; the fastest also with.
    target: the ratio ours / fastest Keras that the issue asks for (None: none).
    bf16: also time ours with config.dtype=bfloat16 (mixed precision), for the record.
    model_kwargs: the model's constructor arguments, both sides (None: its defaults).
  """
  model: str
  batch_size: int
  image_shape: tuple[int, int, int]
  experiment: str
  window_steps: int
  windows_per_pass: int
  steps_per_execution: tuple[int, ...]
  target: float | None = None
  bf16: bool = False
  model_kwargs: dict | None = None

  @property
  def name(self) -> str:
    return f"{self.model.rsplit(':', 1)[-1]}/{self.batch_size}"

  @property
  def num_images(self) -> int:
    return self.window_steps * self.batch_size * self.windows_per_pass

  def spec(self, tolerance: float, max_windows: int) -> dict:
    """What a worker process needs to know (JSON)."""
    return {**dataclasses.asdict(self), "num_images": self.num_images,
            "num_classes": NUM_CLASSES, "tolerance": tolerance,
            "max_windows": max_windows}


# Windows of roughly a second for the faster side on a 2-core CPU (ResNet-20, at a
# few hundred images/s, gets fewer steps); ~50,000 images for the tutorial CNN.
CELLS = (
    Cell("seed_cnn", 32, (28, 28, 1), "seed_cnn", 200, 8, (1, 10, 50, 200), 2.0),
    Cell("seed_cnn", 128, (28, 28, 1), "seed_cnn", 100, 4, (1, 10, 50, 100), 2.0,
         bf16=True),
    Cell("vgg_bn", 128, (28, 28, 1), "vgg_bn_fashion_mnist", 30, 3, (1, 10, 30), 1.2,
         bf16=True),
    Cell("resnet20", 128, (32, 32, 3), "resnet20_cifar10", 5, 4, (1, 5)),
)
# Networks the project has never seen, in plain flax.linen (benchmarks/unseen/),
# trained through --config.model=module:Class, each against its Keras twin.
UNSEEN_CELLS = tuple(
    Cell(f"benchmarks.unseen.flax_nets:{name}", 32, (28, 28, 1), "seed_cnn", steps, 4,
         (1, 10), 1.5)
    for name, steps in (("SmallNet", 100), ("MobileNetGN", 20), ("StemResNet", 100),
                        ("DilatedNet", 10), ("ConvNeXtTiny", 10)))


def quick(cell: Cell) -> Cell:
  """The same cell with tiny windows: a smoke test of every code path."""
  return dataclasses.replace(cell, window_steps=2, windows_per_pass=2,
                             steps_per_execution=(2,))


def keras_configs(cell: Cell) -> list[dict]:
  """The Keras settings tried first for `cell`: the tutorial's defaults
  (steps_per_execution 1, jit_compile "auto", which Keras resolves to False on a
  machine without a GPU), then each larger steps_per_execution without XLA. XLA
  (`xla_config`) is then tried at the fastest of these."""
  return [{"steps_per_execution": 1, "jit_compile": "auto"}] + [
      {"steps_per_execution": s, "jit_compile": False}
      for s in cell.steps_per_execution if s > 1]


def xla_config(steps_per_execution: int) -> dict:
  return {"steps_per_execution": steps_per_execution, "jit_compile": True}


def config_name(config: dict) -> str:
  jit = config["jit_compile"]
  jit = "auto" if jit == "auto" else ("xla" if jit else "no xla")
  return f"spe {config['steps_per_execution']}, {jit}"
