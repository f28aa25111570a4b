"""The bench's networks in Keras 3 (TensorFlow backend), layer for layer as ours.

Each Keras layer with weights is named after the path of its Flax counterpart
(`BasicBlock_3__Conv_0` for params['BasicBlock_3']['Conv_0']), so `copy_weights` can
load our initial weights into it and the tests can check that both compute the same
loss. Imports Keras, not JAX: the Keras worker processes never load JAX.
"""

import os

import numpy as np

LEARNING_RATE = 1e-3
BN = dict(momentum=0.9, epsilon=1e-5)  # Flax's BatchNorm as models/components.py sets it.
PATH_SEP = "__"


def import_keras():
  """Keras on TensorFlow, seeing no GPU; TensorFlow's C++ info messages off."""
  os.environ["KERAS_BACKEND"] = "tensorflow"
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  import keras  # pylint: disable=g-import-not-at-top
  return tf, keras


def _seed_cnn(keras, x, num_classes):
  """models/seed_cnn.py: the tutorial's network (347,146 parameters on 28x28x1)."""
  L = keras.layers
  x = L.Conv2D(32, (3, 3), activation="relu", name="Conv_0")(x)
  x = L.MaxPooling2D((2, 2))(x)
  x = L.Flatten()(x)
  x = L.Dense(64, activation="relu", name="Dense_0")(x)
  return L.Dense(num_classes, name="Dense_1")(x)


def _vgg_bn(keras, x, num_classes, dropout_rate=0.2, head_dropout_rate=0.3,
            widths=(32, 64), convs_per_block=2, hidden=256):
  """models/vgg.py's VGGBN (871,082 parameters on 28x28x1 with its defaults)."""
  L = keras.layers
  conv = 0
  if isinstance(convs_per_block, int):
    convs_per_block = (convs_per_block,) * len(widths)
  for width, count in zip(widths, convs_per_block):
    for _ in range(count):
      x = L.Conv2D(width, (3, 3), padding="same", use_bias=False, name=f"Conv_{conv}")(x)
      x = L.ReLU()(L.BatchNormalization(**BN, name=f"BatchNorm_{conv}")(x))
      conv += 1
    x = L.Dropout(dropout_rate)(L.MaxPooling2D((2, 2))(x))
  x = L.Flatten()(x)
  x = L.Dense(hidden, use_bias=False, name="Dense_0")(x)
  x = L.ReLU()(L.BatchNormalization(**BN, name=f"BatchNorm_{conv}")(x))
  x = L.Dropout(head_dropout_rate)(x)
  return L.Dense(num_classes, name="Dense_1")(x)


def _fast_cnn(keras, x, num_classes, widths=(32, 64), hidden=256):
  """models/fast_cnn.py's FastCNN (824,778 parameters on 28x28x1 with its defaults)."""
  L = keras.layers
  x = L.ZeroPadding2D(1)(x)
  x = L.Conv2D(widths[0], (3, 3), activation="relu", name="Conv_0")(x)
  x = L.MaxPooling2D((2, 2))(x)
  for i, width in enumerate(widths[1:]):
    x = L.Conv2D(width, (3, 3), padding="same", use_bias=False, name=f"Conv_{i + 1}")(x)
    x = L.MaxPooling2D((2, 2))(x)
    x = L.ReLU()(L.BatchNormalization(**BN, name=f"BatchNorm_{i}")(x))
  x = L.Flatten()(x)
  x = L.Dense(hidden, use_bias=False, name="Dense_0")(x)
  x = L.ReLU()(L.BatchNormalization(**BN, name=f"BatchNorm_{len(widths) - 1}")(x))
  return L.Dense(num_classes, name="Dense_1")(x)


def _resnet20(keras, x, num_classes):
  """models/resnet.py's ResNet20 (CIFAR form, option-A shortcuts: 269,722 parameters
  on 32x32x3). Strided convolutions pad 1 on every side, as ours (Keras's "same"
  would pad only after)."""
  L = keras.layers

  def conv(x, filters, strides, name):
    if strides > 1:
      x = L.ZeroPadding2D(1)(x)
    return L.Conv2D(filters, (3, 3), strides, padding="valid" if strides > 1 else "same",
                    use_bias=False, name=name)(x)

  def shortcut(x, filters):
    """Option A: subsample by 2, then zero channels up to `filters`."""
    extra = filters - x.shape[-1]
    return L.Lambda(lambda t: keras.ops.pad(
        t[:, ::2, ::2, :], [[0, 0], [0, 0], [0, 0], [0, extra]]))(x)

  x = conv(x, 16, 1, "conv_init")
  x = L.ReLU()(L.BatchNormalization(**BN, name="norm_init")(x))
  block = 0
  for stage, filters in enumerate((16, 32, 64)):
    for j in range(3):
      strides = 2 if stage > 0 and j == 0 else 1
      p = f"BasicBlock_{block}{PATH_SEP}"
      y = conv(x, filters, strides, p + "Conv_0")
      y = L.ReLU()(L.BatchNormalization(**BN, name=p + "BatchNorm_0")(y))
      y = conv(y, filters, 1, p + "Conv_1")
      y = L.BatchNormalization(**BN, name=p + "BatchNorm_1")(y)
      x = L.ReLU()(L.Add()([shortcut(x, filters) if strides > 1 else x, y]))
      block += 1
  x = L.GlobalAveragePooling2D()(x)
  return L.Dense(num_classes, name="Dense_0")(x)


NETWORKS = {"seed_cnn": _seed_cnn, "vgg_bn": _vgg_bn, "fast_cnn": _fast_cnn,
            "resnet20": _resnet20}
# Networks the project has never seen (benchmarks/unseen/), by our side's model name.
UNSEEN = "benchmarks.unseen.flax_nets"


def network(model: str):
  """The Keras builder of `model`: a NETWORKS key, or an UNSEEN 'module:Class'."""
  if model.startswith(UNSEEN + ":"):
    from benchmarks.unseen import keras_nets as unseen  # pylint: disable=g-import-not-at-top
    return unseen.NETWORKS[model.split(":", 1)[1]]
  return NETWORKS[model]


def build(model: str, image_shape, num_classes: int = 10, steps_per_execution: int = 1,
          jit_compile="auto", **model_kwargs):
  """Network `model` (a NETWORKS key), compiled as the Keras tutorial compiles it:
  Adam 1e-3, sparse categorical cross-entropy on logits, accuracy. `model_kwargs`
  are fields of our model that the Keras network takes too (VGG-BN's dropout rates)."""
  _, keras = import_keras()
  inputs = keras.Input(tuple(image_shape))
  outputs = network(model)(keras, inputs, num_classes, **model_kwargs)
  net = keras.Model(inputs, outputs, name=model.rsplit(":", 1)[-1])
  net.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"], steps_per_execution=steps_per_execution,
              jit_compile=jit_compile)
  return net


def trainable_parameters(net) -> int:
  return sum(int(w.numpy().size) for w in net.trainable_weights)


def copy_weights(net, params: dict, batch_stats: dict | None = None) -> None:
  """Loads Flax `params` (and BatchNorm `batch_stats`) into the Keras `net` built by
  `build`; every weight of both must be used, with the same shape."""
  used = set()

  def lookup(tree, path, key):
    node = tree
    for part in path:
      node = node[part]
    used.add((id(tree), *path, key))
    return node[key]

  for layer in net.layers:
    if not layer.weights:
      continue
    path = layer.name.split(PATH_SEP)
    kind = layer.__class__.__name__
    if kind == "BatchNormalization":
      values = [lookup(params, path, "scale"), lookup(params, path, "bias"),
                lookup(batch_stats, path, "mean"), lookup(batch_stats, path, "var")]
    elif kind in ("GroupNormalization", "LayerNormalization"):
      values = [lookup(params, path, "scale"), lookup(params, path, "bias")]
    elif kind == "LayerScale":
      values = [lookup(params, path, "gamma")]
    else:
      kernel = np.asarray(lookup(params, path, "kernel"))
      if kind == "DepthwiseConv2D":  # Flax [KH, KW, 1, C]; Keras [KH, KW, C, 1].
        kernel = kernel.reshape(*kernel.shape[:2], -1, 1)
      values = [kernel]
      if getattr(layer, "use_bias", False):
        values.append(lookup(params, path, "bias"))
    for weight, value in zip(layer.weights, values):
      if tuple(weight.shape) != tuple(value.shape):
        raise ValueError(f"{layer.name}: Keras weight {weight.path} has shape "
                         f"{tuple(weight.shape)}, ours {tuple(value.shape)}.")
    layer.set_weights([np.asarray(v) for v in values])
  flax_leaves = _count_leaves(params) + _count_leaves(batch_stats or {})
  if len(used) != flax_leaves:
    raise ValueError(f"{flax_leaves - len(used)} of our {flax_leaves} weights have no "
                     "Keras counterpart: the networks differ.")


def _count_leaves(tree) -> int:
  if isinstance(tree, dict):
    return sum(_count_leaves(v) for v in tree.values())
  return 1
