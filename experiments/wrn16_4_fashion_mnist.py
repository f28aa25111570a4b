"""WRN-16-4 on TFDS `fashion_mnist`: the architecture of experiments/wrn16_4_cifar10.py on
28x28 grey images (stages at 28, 14 and 7 pixels).

2-pixel random crops and left-right flips (clothes stay clothes when mirrored),
normalised inputs; Adam 1e-3 on a cosine schedule after 1 epoch of warm-up, batch
128, 30 epochs; 10% of train (6,000, stratified) held out, best checkpoint by
validation accuracy. Target: test accuracy at or above 0.950 (WRN-28-10 with augmentation: about 0.96).
Offline, prepare Fashion-MNIST once (Debian: apt-get install dataset-fashion-mnist):

  ./run.sh prepare fashion_mnist --from /usr/share/datasets/fashion-mnist
  ./run.sh train --config experiments/wrn16_4_fashion_mnist.py \
      --workdir runs/wrn16_4_fashion_mnist
"""

from experiments import wrn16_4_cifar10


def get_config():
  config = wrn16_4_cifar10.get_config()
  config.dataset = "fashion_mnist"
  config.crop_padding = 2
  config.num_epochs = 30
  return config
