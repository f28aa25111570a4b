"""Wide ResNet WRN-16-4 (Zagoruyko & Komodakis, 2016) on TFDS `cifar10`.

Pre-activation wide blocks, two per group, of 64, 128, 256 channels: 2,748,890
parameters (the paper's 2.7M). The paper's augmentation (4-pixel crops, flips) and
normalisation; Adam 1e-3 on a cosine schedule after 1 epoch of warm-up (the paper
uses SGD with momentum), batch 128, 60 epochs, dropout 0.3 between the convolutions
of a block, 10% of train held out for selection. Not tuned to a target yet. TFDS
downloads cifar10 where it can.

  ./run.sh train --config experiments/wrn16_4_cifar10.py --workdir runs/wrn16_4_cifar10
"""

from experiments import resnet20_cifar10


def get_config():
  config = resnet20_cifar10.get_config()
  config.model = "wrn16_4"
  config.model_kwargs = dict(dropout_rate=0.3, norm="batch", act="relu")
  return config
