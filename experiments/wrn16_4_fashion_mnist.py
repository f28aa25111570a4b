"""WRN-16-4 on TFDS `fashion_mnist`: the architecture of experiments/wrn16_4_cifar10.py on
28x28 grey images (stages at 28, 14 and 7 pixels).

2-pixel random crops and left-right flips (clothes stay clothes when mirrored),
normalised inputs; SGD with Nesterov momentum 0.9, learning rate 0.1 on a cosine
schedule after 1 epoch of warm-up, weight decay 5e-4 (an L2 term, not on biases and
BatchNorm parameters), batch 128, 50 epochs; 10% of train (6,000, stratified) held out,
best checkpoint by validation accuracy. Target: test accuracy at or above 0.950
(WRN-28-10 with augmentation: about 0.96). Measured on an NVIDIA H100 (2026-11-26, four
runs sharing the card): at 30 epochs, `./run.sh sweep --sweep label_smoothing=0.0,0.1`
chose 0.0 on validation (0.9558), test 0.9476; at 50 epochs (the recipe here, chosen
over 30 by validation) the run logged validation 0.9592 / 0.9585 and test 0.9522 /
0.9516 at epochs 49 / 50; its whole record did not come back from that machine, so the
README gives the 30-epoch sweep as the selected result.
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
  config.num_epochs = 50
  config.optimizer = "sgd"
  config.optimizer_kwargs = dict(momentum=0.9, nesterov=True)
  config.learning_rate = 0.1
  config.weight_decay = 5e-4
  return config
