"""ResNet-32 in the CIFAR form on TFDS `cifar10`: the recipe of resnet20_cifar10.py.

Five basic blocks per stage: 464,154 parameters (the paper's 0.46M).

  ./run.sh train --config experiments/resnet32_cifar10.py --workdir runs/resnet32_cifar10
"""

from experiments import resnet20_cifar10


def get_config():
  config = resnet20_cifar10.get_config()
  config.model = "resnet32"
  return config
