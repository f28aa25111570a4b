"""Keras 3 twins of flax_nets.py, layer for layer: each Keras layer with weights is
named after the path of its Flax counterpart (`SeparableBlock_0__Conv_0`), so
`copy_weights` loads a Flax model's weights into its twin. Flax's defaults are
spelled out where Keras's differ (BatchNorm momentum 0.99 and epsilon 1e-5,
GroupNorm and LayerNorm epsilon 1e-6, exact GELU)."""

PATH_SEP = "__"
BN = dict(momentum=0.99, epsilon=1e-5)


def _small_net(keras, x, num_classes):
  L = keras.layers
  x = L.Conv2D(32, 3, padding="same", use_bias=False, name="Conv_0")(x)
  x = L.ReLU()(L.BatchNormalization(**BN, name="BatchNorm_0")(x))
  x = L.Dropout(0.2)(x)
  return L.Dense(num_classes, name="Dense_0")(L.GlobalAveragePooling2D()(x))


def _mobilenet_gn(keras, x, num_classes):
  L = keras.layers
  gn = lambda name: L.GroupNormalization(groups=8, epsilon=1e-6, name=name)
  x = L.Conv2D(32, 3, padding="same", use_bias=False, name="Conv_0")(x)
  x = L.ReLU()(gn("GroupNorm_0")(x))
  for i, (features, strides) in enumerate(((64, 1), (64, 2), (128, 1), (128, 2),
                                           (128, 1))):
    p = f"SeparableBlock_{i}{PATH_SEP}"
    x = L.DepthwiseConv2D(3, strides, padding="same", use_bias=False, name=p + "Conv_0")(x)
    x = L.ReLU()(gn(p + "GroupNorm_0")(x))
    x = L.Conv2D(features, 1, use_bias=False, name=p + "Conv_1")(x)
    x = L.ReLU()(gn(p + "GroupNorm_1")(x))
  x = L.MaxPooling2D(2)(x)
  return L.Dense(num_classes, name="Dense_0")(L.GlobalAveragePooling2D()(x))


def _stem_resnet(keras, x, num_classes):
  L = keras.layers
  x = L.Conv2D(32, 5, 2, padding="same", use_bias=False, name="Conv_0")(x)
  x = L.ReLU()(L.BatchNormalization(**BN, name="BatchNorm_0")(x))
  x = L.MaxPooling2D(3, 2, padding="same")(x)
  for i, (features, strides) in enumerate(((32, 1), (64, 2))):
    p = f"ResBlock_{i}{PATH_SEP}"
    y = L.Conv2D(features, 3, strides, padding="same", use_bias=False, name=p + "Conv_0")(x)
    y = L.ReLU()(L.BatchNormalization(**BN, name=p + "BatchNorm_0")(y))
    y = L.Conv2D(features, 3, padding="same", use_bias=False, name=p + "Conv_1")(y)
    y = L.BatchNormalization(**BN, name=p + "BatchNorm_1")(y)
    if x.shape[-1] != features or strides > 1:
      x = L.Conv2D(features, 1, strides, padding="same", use_bias=False,
                   name=p + "Conv_2")(x)
      x = L.BatchNormalization(**BN, name=p + "BatchNorm_2")(x)
    x = L.ReLU()(L.Add()([x, y]))
  return L.Dense(num_classes, name="Dense_0")(L.GlobalAveragePooling2D()(x))


def _dilated_net(keras, x, num_classes):
  L = keras.layers
  for i, (features, dilation) in enumerate(((32, 1), (32, 2), (64, 4), (64, 1))):
    x = L.Conv2D(features, 3, padding="same", dilation_rate=dilation, use_bias=False,
                 name=f"Conv_{i}")(x)
    x = L.ReLU()(L.BatchNormalization(**BN, name=f"BatchNorm_{i}")(x))
  x = L.AveragePooling2D(2)(x)
  return L.Dense(num_classes, name="Dense_0")(L.Flatten()(x))


def _convnext_tiny(keras, x, num_classes):
  L = keras.layers

  class LayerScale(L.Layer):
    def build(self, shape):
      self.gamma = self.add_weight(shape=(shape[-1],), initializer="zeros", name="gamma")

    def call(self, y):
      return y * self.gamma

  def block(x, name):
    c = x.shape[-1]
    p = name + PATH_SEP
    y = L.DepthwiseConv2D(7, padding="same", name=p + "Conv_0")(x)
    y = L.LayerNormalization(epsilon=1e-6, name=p + "LayerNorm_0")(y)
    y = L.Dense(4 * c, name=p + "Dense_0")(y)
    y = L.Dense(c, name=p + "Dense_1")(keras.activations.gelu(y, approximate=False))
    return L.Add()([x, LayerScale(name=name)(y)])

  x = L.Conv2D(48, 2, 2, name="Conv_0")(x)
  x = L.LayerNormalization(epsilon=1e-6, name="LayerNorm_0")(x)
  x = block(block(x, "ConvNeXtBlock_0"), "ConvNeXtBlock_1")
  x = L.LayerNormalization(epsilon=1e-6, name="LayerNorm_1")(x)
  x = L.Conv2D(96, 2, 2, name="Conv_1")(x)
  x = block(block(x, "ConvNeXtBlock_2"), "ConvNeXtBlock_3")
  x = L.LayerNormalization(epsilon=1e-6, name="LayerNorm_2")(L.GlobalAveragePooling2D()(x))
  return L.Dense(num_classes, name="Dense_0")(x)


# Flax class name (flax_nets.py) -> Keras network builder.
NETWORKS = {"SmallNet": _small_net, "MobileNetGN": _mobilenet_gn,
            "StemResNet": _stem_resnet, "DilatedNet": _dilated_net,
            "ConvNeXtTiny": _convnext_tiny}
