"""The Keras tutorial on full TFDS `mnist` (60,000 train / 10,000 test).

Needs network access for TFDS to download mnist (or a data_dir where it is prepared):

  ./run.sh train --config experiments/seed_cnn_mnist.py --workdir runs/seed_cnn_mnist
"""

from experiments import seed_cnn


def get_config():
  config = seed_cnn.get_config()
  config.dataset = "mnist"
  return config
