"""ResNet-56 in the CIFAR form on TFDS `cifar10`: the recipe of resnet20_cifar10.py.

Nine basic blocks per stage: 853,018 parameters (the paper's 0.85M).

  ./run.sh train --config experiments/resnet56_cifar10.py --workdir runs/resnet56_cifar10
"""

from experiments import resnet20_cifar10


def get_config():
  config = resnet20_cifar10.get_config()
  config.model = "resnet56"
  return config
