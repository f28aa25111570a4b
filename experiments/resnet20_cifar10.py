"""ResNet-20 in the CIFAR form (He et al., 2016) on TFDS `cifar10`.

3x3 stem, three stages of 3 basic blocks (16, 32, 64 channels), zero-padded identity
shortcuts (the paper's option A): 269,722 parameters, 76M FLOPs per image forward
(XLA's count; the paper's 41M counts multiply-adds).
Augmentation as in the paper: 4-pixel padding and random crops, left-right flips;
per-channel normalisation. The paper trains with SGD and momentum; this project's
optimizer is Adam: 1e-3 on a cosine schedule after 1 epoch of warm-up, batch 128,
60 epochs, 10% of train (5,000) held out for selection. Not tuned to a target yet.
Parts are config values, e.g. `--config.model_kwargs.norm=group`. TFDS downloads
cifar10 where it can.

  ./run.sh train --config experiments/resnet20_cifar10.py --workdir runs/resnet20_cifar10
"""

from experiments import seed_cnn


def get_config():
  config = seed_cnn.get_config()
  config.model = "resnet20"
  config.model_kwargs = dict(shortcut="pad", norm="batch", act="relu")
  config.dataset = "cifar10"
  config.crop_padding = 4
  config.flip = True
  config.normalize = True
  config.batch_size = 128
  config.num_epochs = 60
  config.learning_rate = 1e-3
  config.lr_schedule = "cosine"
  config.warmup_epochs = 1
  config.validation_fraction = 0.1
  config.keep_best_checkpoints = 1
  config.best_metric = "validation_accuracy"
  config.steps_per_dispatch = 50
  return config
