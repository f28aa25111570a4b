"""ResNet-18 (He et al., 2016; torchvision's layout) on a folder of ImageNet-style
images, 224x224.

Basic blocks in four stages of 64-512 channels, projection shortcuts: 11,689,512
parameters with 1,000 classes (fewer with fewer classes: the last layer is
512 x classes), 3.4G FLOPs per image forward: a GPU experiment. The data is a
folder of class subfolders (ImageNet, Imagenette, your own), resized to 224x224x3
when prepared; 10% of each class is held out as test, and 10% of the rest for
selection. Crops and flips, per-channel normalisation; Adam 1e-3 on a cosine schedule
after 2 epochs of warm-up, batch 256, 30 epochs. Not tuned to a target yet.

  ./run.sh train --config experiments/resnet18_imagenet_folder.py \
      --workdir runs/resnet18 --config.dataset=folder:/path/to/train
"""

from experiments import seed_cnn


def get_config():
  config = seed_cnn.get_config()
  config.model = "resnet18"
  config.model_kwargs = dict(norm="batch", act="relu")
  config.dataset = "folder:/path/to/train"  # Override with the folder of classes.
  config.image_size = (224, 224, 3)
  config.folder_test_fraction = 0.1
  config.crop_padding = 16
  config.flip = True
  config.normalize = True
  config.batch_size = 256
  config.eval_batch_size = 256
  config.num_epochs = 30
  config.learning_rate = 1e-3
  config.lr_schedule = "cosine"
  config.warmup_epochs = 2
  config.validation_fraction = 0.1
  config.keep_best_checkpoints = 1
  config.best_metric = "validation_accuracy"
  config.steps_per_dispatch = 20
  return config
