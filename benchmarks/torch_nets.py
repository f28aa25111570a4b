"""The bench's GPU peer: the same networks in PyTorch, layer for layer as ours.

As keras_nets.py does for Keras: each module with weights is named after the path of
its Flax counterpart ('BasicBlock_3.Conv_0' for params['BasicBlock_3']['Conv_0']), so
`copy_weights` can load our initial weights into it and the bench can check, before
it times anything, that both sides compute the same loss (`same_loss`). Images enter
NHWC as ours and are made NCHW (channels-last memory when asked) inside `forward`; the
flattening before VGG-BN's dense layer is in NHWC order, as ours. Imports torch and
numpy only.
"""

import numpy as np

BN_MOMENTUM, BN_EPS = 0.1, 1e-5  # torch's momentum 0.1 is Flax's 0.9.


def _modules():
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  F = nn.functional

  def bn(width):
    return nn.BatchNorm2d(width, eps=BN_EPS, momentum=BN_MOMENTUM)

  class Net(nn.Module):
    """Holds modules under Flax paths: `self.add(path, module)`."""

    def add(self, path, module):
      """Registers `module` at the Flax `path` and returns it (keep it in a plain list
      or tuple: a module attribute would register it a second time)."""
      parent = self
      *parents, leaf = path.split(".")
      for name in parents:
        if not hasattr(parent, name):
          parent.add_module(name, nn.Module())
        parent = getattr(parent, name)
      parent.add_module(leaf, module)
      return module

  class SeedCNN(Net):
    """models/seed_cnn.py (347,146 parameters on 28x28x1)."""

    def __init__(self, shape, num_classes):
      super().__init__()
      h, w, c = shape
      flat = (h - 2) // 2 * ((w - 2) // 2) * 32
      self.layers = (self.add("Conv_0", nn.Conv2d(c, 32, 3)),
                     self.add("Dense_0", nn.Linear(flat, 64)),
                     self.add("Dense_1", nn.Linear(64, num_classes)))

    def forward(self, x):
      conv, fc1, fc2 = self.layers
      x = F.max_pool2d(F.relu(conv(x)), 2)
      return fc2(F.relu(fc1(torch.flatten(x.permute(0, 2, 3, 1), 1))))

  class VGGBN(Net):
    """models/vgg.py's VGGBN with its defaults (871,082 parameters on 28x28x1)."""

    def __init__(self, shape, num_classes, dropout_rate=0.2, head_dropout_rate=0.3):
      super().__init__()
      h, w, c = shape
      self.convs, self.norms = [], []
      for i, width in enumerate((32, 32, 64, 64)):
        self.convs.append(self.add(f"Conv_{i}", nn.Conv2d(c, width, 3, padding=1,
                                                          bias=False)))
        self.norms.append(self.add(f"BatchNorm_{i}", bn(width)))
        c = width
      self.head = (self.add("Dense_0", nn.Linear(h // 4 * (w // 4) * c, 256, bias=False)),
                   self.add("BatchNorm_4", nn.BatchNorm1d(256, eps=BN_EPS,
                                                          momentum=BN_MOMENTUM)),
                   self.add("Dense_1", nn.Linear(256, num_classes)))
      self.drop, self.head_drop = nn.Dropout(dropout_rate), nn.Dropout(head_dropout_rate)

    def forward(self, x):
      for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
        x = F.relu(norm(conv(x)))
        if i % 2:
          x = self.drop(F.max_pool2d(x, 2))
      fc1, norm, fc2 = self.head
      x = torch.flatten(x.permute(0, 2, 3, 1), 1)
      return fc2(self.head_drop(F.relu(norm(fc1(x)))))

  class ResNet20(Net):
    """models/resnet.py's ResNet20 (CIFAR form, option-A shortcuts: 269,722
    parameters on 32x32x3); strided convolutions pad 1 on every side, as ours."""

    def __init__(self, shape, num_classes):
      super().__init__()
      c = shape[2]
      self.stem = (self.add("conv_init", nn.Conv2d(c, 16, 3, padding=1, bias=False)),
                   self.add("norm_init", bn(16)))
      self.blocks = []
      block, c = 0, 16
      for stage, width in enumerate((16, 32, 64)):
        for j in range(3):
          stride = 2 if stage > 0 and j == 0 else 1
          p = f"BasicBlock_{block}."
          self.blocks.append((
              stride, width - c,
              self.add(p + "Conv_0", nn.Conv2d(c, width, 3, stride, 1, bias=False)),
              self.add(p + "BatchNorm_0", bn(width)),
              self.add(p + "Conv_1", nn.Conv2d(width, width, 3, 1, 1, bias=False)),
              self.add(p + "BatchNorm_1", bn(width))))
          block, c = block + 1, width
      self.fc = (self.add("Dense_0", nn.Linear(64, num_classes)),)

    def forward(self, x):
      conv, norm = self.stem
      x = F.relu(norm(conv(x)))
      for stride, extra, conv0, norm0, conv1, norm1 in self.blocks:
        y = norm1(conv1(F.relu(norm0(conv0(x)))))
        if stride > 1:  # Option A: subsample, then zero channels up to the width.
          x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, extra))
        x = F.relu(x + y)
      return self.fc[0](torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

  return {"seed_cnn": SeedCNN, "vgg_bn": VGGBN, "resnet20": ResNet20}


def build(model: str, image_shape, num_classes: int = 10, **model_kwargs):
  """Network `model` (seed_cnn, vgg_bn or resnet20) for NHWC `image_shape` images; its
  input is NCHW."""
  return _modules()[model](tuple(image_shape), num_classes, **model_kwargs)


def trainable_parameters(net) -> int:
  return sum(p.numel() for p in net.parameters() if p.requires_grad)


def copy_weights(net, params: dict, batch_stats: dict | None = None) -> None:
  """Loads Flax `params` (and BatchNorm `batch_stats`) into `net`; every weight of
  both must be used, with the same shape (convolutions HWIO -> OIHW, dense kernels
  transposed)."""
  import torch  # pylint: disable=g-import-not-at-top
  flat = {}

  def walk(tree, prefix, kind):
    for key, value in tree.items():
      if isinstance(value, dict):
        walk(value, prefix + (key,), kind)
      else:
        flat[(".".join(prefix), kind, key)] = np.asarray(value, np.float32)
  walk(params, (), "params")
  walk(batch_stats or {}, (), "batch_stats")
  used = set()
  names = {"weight": ("params", ("kernel", "scale")), "bias": ("params", ("bias",)),
           "running_mean": ("batch_stats", ("mean",)),
           "running_var": ("batch_stats", ("var",))}
  state = net.state_dict()
  for name, tensor in state.items():
    module, _, leaf = name.rpartition(".")
    if leaf == "num_batches_tracked":
      continue
    kind, candidates = names[leaf]
    key = next((k for k in ((module, kind, c) for c in candidates) if k in flat), None)
    if key is None:
      raise ValueError(f"torch weight {name} has no Flax counterpart.")
    value = flat[key]
    if value.ndim == 4:
      value = value.transpose(3, 2, 0, 1)
    elif value.ndim == 2:
      value = value.T
    if tuple(value.shape) != tuple(tensor.shape):
      raise ValueError(f"{name}: torch shape {tuple(tensor.shape)}, ours "
                       f"{tuple(value.shape)}.")
    state[name] = torch.tensor(value)
    used.add(key)
  net.load_state_dict(state)
  if len(used) != len(flat):
    raise ValueError(f"{len(flat) - len(used)} of our {len(flat)} weights have no torch "
                     "counterpart: the networks differ.")


def same_loss(model: str, image_shape, num_classes: int = 10, batch: int = 32) -> dict:
  """Our network and the torch one from the same initial weights, on the same batch,
  in float32 on the CPU (training mode: BatchNorm on batch statistics; dropout off):
  parameter counts and cross-entropy losses of both. The bench refuses to time a
  pair that differs."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from cnn_jax import models, train  # pylint: disable=g-import-not-at-top
  kwargs = dict(dropout_rate=0.0, head_dropout_rate=0.0) if model == "vgg_bn" else {}
  shape = tuple(image_shape)
  cpu = jax.devices("cpu")[0]
  with jax.default_device(cpu):
    ours = models.build_model(model, num_classes, **kwargs)
    state = train.create_train_state(ours, jax.random.key(0), shape, optax.adam(1e-3))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, *shape), dtype=np.uint8)
    images = images.astype(np.float32) / 255
    labels = rng.integers(0, num_classes, batch).astype(np.int32)
    variables = {"params": state.params}
    if state.batch_stats is not None:
      variables["batch_stats"] = state.batch_stats
    logits, _ = ours.apply(variables, images, train=True, mutable=["batch_stats"])
    our_loss = float(train.cross_entropy(logits, labels).mean())
  peer = build(model, shape, num_classes, **kwargs)
  copy_weights(peer, state.params, state.batch_stats)
  peer.train()
  with torch.no_grad():
    their_loss = float(torch.nn.functional.cross_entropy(
        peer(torch.from_numpy(images).permute(0, 3, 1, 2)),
        torch.from_numpy(labels).long()))
  return {"params_ours": models.summary(ours, shape)["params"],
          "params_torch": trainable_parameters(peer), "loss_ours": our_loss,
          "loss_torch": their_loss}
