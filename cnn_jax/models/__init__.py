"""The model registry: one dict from config name to model constructor, and the
standard `module:attr` form for models that live outside the package.

`--config.model=vgg_bn` builds a model of the zoo; `--config.model=my_models.net:MyNet`
imports `my_models.net` (from the directory the run starts in, PYTHONPATH, or an
installed package) and builds its `MyNet`, a `flax.linen.Module` with a `num_classes`
field whose `__call__(x, train)` returns logits. `config.model_kwargs` go to its
constructor either way, and `config.dtype` to its `dtype` field (every model of the zoo
has one: the computation dtype of activations, matmuls and convolutions, parameters
staying float32); a model without one runs in float32 only.
"""

import dataclasses
import functools
import importlib
import typing
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import errors
from cnn_jax.models import lenet, resnet, vit, wide_resnet
from cnn_jax.models.costs import summary
from cnn_jax.models.fast_cnn import FastCNN
from cnn_jax.models.seed_cnn import SeedCNN
from cnn_jax.models.vgg import VGGBN

MODELS: dict[str, Callable[..., nn.Module]] = {
    "seed_cnn": SeedCNN,
    "vgg_bn": VGGBN,
    "fast_cnn": FastCNN,
    "lenet5": lenet.LeNet5,
    "resnet20": resnet.ResNet20,
    "resnet32": resnet.ResNet32,
    "resnet56": resnet.ResNet56,
    "resnet18": resnet.ResNet18,
    "resnet50": resnet.ResNet50,
    "wrn16_4": wide_resnet.WRN16_4,
    "wrn28_10": wide_resnet.WRN28_10,
    "vit_tiny": vit.ViTTiny,
}


# config.dtype -> the computation dtype given to a model's `dtype` field. Parameters,
# optimizer state and the loss stay float32. For "float32" the field keeps its default,
# None (flax's: compute in the inputs' dtype), which is float32 in the runner and
# float64 in cnn_jax.testing's gradient check. float16 would need loss scaling, which
# the train step does not do, so it is not offered.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _module_class(constructor) -> type | None:
  """The linen Module class `constructor` builds (itself, or a partial's), or None."""
  while isinstance(constructor, functools.partial):
    constructor = constructor.func
  if isinstance(constructor, type) and issubclass(constructor, nn.Module):
    return constructor
  return None


def _fields(constructor) -> set[str] | None:
  """The fields of the Module class `constructor` builds; None when it is not known
  (a factory function)."""
  cls = _module_class(constructor)
  if cls is None:
    return None
  # Flax's own fields (parent, name) are not the model's to configure.
  return {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}


_SIMPLE_TYPES = {int: "an integer", float: "a number", bool: "True or False",
                 str: "a string", tuple: "a tuple"}


def _check_kwarg_types(name: str, constructor, kwargs: dict) -> None:
  """Refuses a model argument whose value is not of its field's plain annotated type
  (int, float, bool, str, tuple); other annotations are the model's to check."""
  cls = _module_class(constructor)
  try:
    hints = typing.get_type_hints(cls) if cls is not None else {}
  except Exception:  # pylint: disable=broad-except  # Unresolvable annotations: no check.
    return
  for key, value in kwargs.items():
    want = hints.get(key)
    if want not in _SIMPLE_TYPES:
      continue
    ok = (isinstance(value, want) and (want is bool or not isinstance(value, bool))
          or want is float and isinstance(value, int) and not isinstance(value, bool)
          or want is tuple and isinstance(value, list))
    if not ok:
      default = next((f.default for f in dataclasses.fields(cls) if f.name == key),
                     dataclasses.MISSING)
      raise errors.ConfigError(
          f"config.model_kwargs.{key}={value!r}: model {name!r} takes "
          f"{_SIMPLE_TYPES[want]} there" +
          ("" if default is dataclasses.MISSING else f" (default {default!r})") + ".")


def _import(spec: str) -> Callable[..., nn.Module]:
  module_name, _, attr = spec.partition(":")
  if not module_name or not attr:
    raise errors.ConfigError(
        f"model={spec!r}: write an outside model as 'package.module:ClassName'.")
  try:
    obj = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    # Only the named module (or its package) missing is the config's mistake; a
    # module that fails on its own imports keeps its traceback.
    if e.name is None or not (module_name + ".").startswith(e.name + "."):
      raise
    raise errors.ConfigError(
        f"model={spec!r}: no module named {e.name!r}. It must be importable from the "
        "directory the run starts in (./run.sh runs in the repository root), from "
        "PYTHONPATH, or be installed.") from None
  for part in attr.split("."):
    if not hasattr(obj, part):
      defined = sorted(k for k, v in vars(obj).items() if _module_class(v) is not None)
      raise errors.ConfigError(
          f"model={spec!r}: {obj.__name__!r} has no attribute {part!r}; the linen "
          f"Modules it defines: {', '.join(defined) or 'none'}.")
    obj = getattr(obj, part)
  cls = _module_class(obj)
  if cls is None or "num_classes" not in _fields(cls):
    what = (f"the Module {cls.__name__}, which has no num_classes field" if cls
            else f"a {type(obj).__name__}, not a flax.linen.Module subclass")
    raise errors.ConfigError(
        f"model={spec!r} is {what}. Point it at a linen Module class with a "
        "`num_classes: int` field whose __call__(x, train) returns logits.")
  return obj


def resolve_model(name: str) -> Callable[..., nn.Module]:
  """The constructor `name` stands for: a MODELS key, or 'module:attr' outside."""
  if ":" in name:
    return _import(name)
  if name not in MODELS:
    raise errors.ConfigError(
        f"Unknown model {name!r}. Known models: {', '.join(sorted(MODELS))}. "
        "Register a class in cnn_jax/models/__init__.py:MODELS, or name one outside "
        "the package as --config.model=package.module:ClassName.")
  return MODELS[name]


def build_model(name: str, num_classes: int, dtype: str = "float32",
                **kwargs) -> nn.Module:
  """Returns the model `name` (see `resolve_model`) with `num_classes` output logits,
  computing in `dtype` (a DTYPES name, config.dtype).

  `kwargs` (config.model_kwargs) are its constructor's fields; parts such as `norm`
  and `act` may be names (models/components.py).
  """
  kwargs = drop_legacy_kwargs(name, kwargs)
  constructor = check_model(name, kwargs, dtype)
  if dtype != "float32":
    kwargs = {**kwargs, "dtype": DTYPES[dtype]}
  return constructor(num_classes=num_classes, **kwargs)


# The zoo's `conv` part ("fast": the zoo's own CPU layer classes, "xla": nn.Conv) is
# gone: every model uses nn.Conv, and the CPU backend (cnn_jax/cpu) makes it fast.
# Configs and runs that name it still build, with the same parameters.
LEGACY_KWARGS = {"conv": ("fast", "xla")}


def drop_legacy_kwargs(name: str, kwargs: dict) -> dict:
  """`kwargs` without the zoo's legacy parts (LEGACY_KWARGS) where model `name` of the
  zoo no longer takes them."""
  if name not in MODELS:
    return kwargs
  fields = _fields(MODELS[name]) or set()
  return {k: v for k, v in kwargs.items()
          if not (k in LEGACY_KWARGS and k not in fields and v in LEGACY_KWARGS[k])}


def check_model(name: str, kwargs: dict,
                dtype: str = "float32") -> Callable[..., nn.Module]:
  """The constructor of model `name`, after checking it takes `kwargs` and can compute
  in `dtype`; raises ConfigError naming the model or arguments that are wrong."""
  kwargs = drop_legacy_kwargs(name, kwargs)
  constructor = resolve_model(name)
  fields = _fields(constructor)
  unknown = set(kwargs) - fields if fields is not None else set()
  if unknown:
    raise errors.ConfigError(
        f"config.model_kwargs has {', '.join(sorted(unknown))}, which model {name!r} "
        f"does not take; its arguments: "
        f"{', '.join(sorted(fields - {'num_classes', 'dtype'})) or 'none'}.")
  _check_kwarg_types(name, constructor, kwargs)
  if "dtype" in kwargs:
    raise errors.ConfigError(
        f"config.model_kwargs has dtype={kwargs['dtype']!r}: set the computation dtype "
        f"with --config.dtype instead ({', '.join(DTYPES)}).")
  if dtype not in DTYPES:
    raise errors.ConfigError(f"config.dtype={dtype!r} is not one of "
                             f"{', '.join(DTYPES)}.")
  if dtype != "float32" and "dtype" not in (fields or ()):
    raise errors.ConfigError(
        f"config.dtype={dtype!r}: model {name!r} has no `dtype` field to compute in "
        "it. Give its class a field `dtype: Any = None` passed as `dtype=` to "
        "its layers (as the models of cnn_jax/models do), or use "
        "--config.dtype=float32.")
  return constructor


__all__ = ["DTYPES", "MODELS", "build_model", "check_model", "resolve_model", "summary"]
