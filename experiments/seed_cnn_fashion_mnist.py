"""The Keras tutorial network and recipe on TFDS `fashion_mnist` (60,000 / 10,000).

The baseline for `vgg_bn_fashion_mnist.py`: same data, no augmentation. Measured:
test accuracy 0.9115 after 5 epochs. TFDS downloads fashion_mnist where it can;
offline, prepare it once from its IDX files (Debian: apt-get install
dataset-fashion-mnist):

  ./run.sh prepare fashion_mnist --from /usr/share/datasets/fashion-mnist

  ./run.sh train --config experiments/seed_cnn_fashion_mnist.py \
      --workdir runs/seed_cnn_fashion_mnist
"""

from experiments import seed_cnn


def get_config():
  config = seed_cnn.get_config()
  config.dataset = "fashion_mnist"
  return config
