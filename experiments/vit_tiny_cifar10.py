"""A small Vision Transformer on TFDS `cifar10`: 4x4 patches, 6 blocks of width 192.

64 patch tokens and a class token, learned position embeddings, 3 heads, MLP 384,
pre-norm LayerNorm and GELU: 1,806,538 parameters. Crops, flips and normalisation
as for the ResNets; Adam 1e-3 on a cosine schedule after 5 epochs of warm-up,
batch 128, 60 epochs, dropout 0.1, 10% of train held out for selection. Not tuned to
a target yet (transformers this small need more augmentation than this to match
the ResNets on CIFAR-10). TFDS downloads cifar10 where it can.

  ./run.sh train --config experiments/vit_tiny_cifar10.py --workdir runs/vit_tiny_cifar10
"""

from experiments import resnet20_cifar10


def get_config():
  config = resnet20_cifar10.get_config()
  config.model = "vit_tiny"
  config.model_kwargs = dict(patch_size=4, dropout_rate=0.1, norm="layer", act="gelu")
  config.warmup_epochs = 5
  return config
