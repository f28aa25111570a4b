"""What a model costs: its parameter count and its forward FLOPs per image."""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import cpu


def _count(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def summary(model: nn.Module, image_shape: Sequence[int], batch_size: int = 1) -> dict:
  """Parameters and evaluation-mode forward FLOPs per image of `model`.

  Nothing is initialised or run: the variables are abstract (`jax.eval_shape`) and the
  FLOPs are XLA's cost analysis of `apply` compiled for the CPU, whatever the default
  backend, so they count what that program computes (every multiply and add,
  normalisation and activation included), not only the convolutions and matmuls. The
  CPU, because every JAX has it and its cost analysis counts convolutions: on a GPU
  XLA hands them to cuDNN as custom calls, which its cost analysis leaves out (an H100
  reported 0.65 MFLOPs for ResNet-20's 61 on 28x28 images). For the same reason the
  program counted is lowered by XLA's own rules, not the CPU backend's (cnn_jax/cpu).

  Args:
    model: a linen Module called as `model.apply(variables, images, train=False)`.
    image_shape: (height, width, channels) of one image.
    batch_size: images per compiled call; the FLOPs are divided by it.

  Returns:
    {"params": int, "batch_stats": int (0 without BatchNorm), "flops_per_image":
    float (None where the backend reports no cost analysis)}.
  """
  on_cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  images = jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32, sharding=on_cpu)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False),
      jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  variables = jax.tree.map(
      lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=on_cpu), variables)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  with cpu.disabled():  # Custom calls count no FLOPs; `apply` is traced afresh.
    cost = apply.lower(variables, images).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per program.
    cost = cost[0] if cost else None
  flops = cost.get("flops") if cost else None
  return {"params": _count(variables["params"]),
          "batch_stats": _count(variables.get("batch_stats", {})),
          "flops_per_image": None if flops is None else float(flops) / batch_size}
