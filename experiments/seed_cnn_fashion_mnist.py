"""The Keras tutorial network and recipe on TFDS `fashion_mnist` (60,000 / 10,000).

The baseline for `vgg_bn_fashion_mnist.py`: same data, no augmentation. Needs network
access for TFDS to download fashion_mnist (or a data_dir where it is prepared):

  ./run.sh train --config experiments/seed_cnn_fashion_mnist.py \
      --workdir runs/seed_cnn_fashion_mnist
"""

from experiments import seed_cnn


def get_config():
  config = seed_cnn.get_config()
  config.dataset = "fashion_mnist"
  return config
