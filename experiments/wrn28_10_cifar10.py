"""Wide ResNet WRN-28-10 on TFDS `cifar10`: the recipe of wrn16_4_cifar10.py.

Four wide blocks per group of 160, 320, 640 channels: 36,479,194 parameters (the
paper's 36.5M), 9.5G FLOPs per image forward: a GPU experiment.

  ./run.sh train --config experiments/wrn28_10_cifar10.py --workdir runs/wrn28_10_cifar10
"""

from experiments import wrn16_4_cifar10


def get_config():
  config = wrn16_4_cifar10.get_config()
  config.model = "wrn28_10"
  return config
