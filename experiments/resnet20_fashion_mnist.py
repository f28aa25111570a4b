"""ResNet-20 on TFDS `fashion_mnist`: the architecture of experiments/resnet20_cifar10.py on
28x28 grey images (stages at 28, 14 and 7 pixels).

2-pixel random crops and left-right flips (clothes stay clothes when mirrored),
normalised inputs; Adam 1e-3 on a cosine schedule after 1 epoch of warm-up, batch
128, 30 epochs; 10% of train (6,000, stratified) held out, best checkpoint by
validation accuracy. Target: test accuracy at or above 0.945 (published ResNet-18: 0.949).
Offline, prepare Fashion-MNIST once (Debian: apt-get install dataset-fashion-mnist):

  ./run.sh prepare fashion_mnist --from /usr/share/datasets/fashion-mnist
  ./run.sh train --config experiments/resnet20_fashion_mnist.py \
      --workdir runs/resnet20_fashion_mnist
"""

from experiments import resnet20_cifar10


def get_config():
  config = resnet20_cifar10.get_config()
  config.dataset = "fashion_mnist"
  config.crop_padding = 2
  config.num_epochs = 30
  return config
