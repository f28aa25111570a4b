"""ResNet-50 (torchvision's layout, stride on the 3x3 convolution) on a folder of
ImageNet-style images, 224x224: the recipe of resnet18_imagenet_folder.py.

Bottleneck blocks (3, 4, 6, 3) of 256-2048 output channels: 25,557,032 parameters
with 1,000 classes, 8.0G FLOPs per image forward.

  ./run.sh train --config experiments/resnet50_imagenet_folder.py \
      --workdir runs/resnet50 --config.dataset=folder:/path/to/train
"""

from experiments import resnet18_imagenet_folder


def get_config():
  config = resnet18_imagenet_folder.get_config()
  config.model = "resnet50"
  config.batch_size = 128
  config.eval_batch_size = 128
  return config
