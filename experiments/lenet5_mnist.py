"""LeNet-5 (LeCun et al., 1998) on TFDS `mnist`: the digits padded to 32x32 by the model.

Conv 6@5x5 -> avg-pool -> conv 16@5x5 -> avg-pool -> FC 120 -> FC 84 -> FC 10, tanh:
61,706 parameters. `--config.model_kwargs.act=relu --config.model_kwargs.pool=max`
gives the common modern variant. Adam 1e-3 on a cosine schedule, batch 128, 10
epochs, 10% of train held out for selection. Not tuned to a target yet. TFDS
downloads mnist where it can.

  ./run.sh train --config experiments/lenet5_mnist.py --workdir runs/lenet5_mnist
"""

from experiments import seed_cnn


def get_config():
  config = seed_cnn.get_config()
  config.model = "lenet5"
  config.model_kwargs = dict(act="tanh", pool="avg")
  config.dataset = "mnist"
  config.batch_size = 128
  config.num_epochs = 10
  config.lr_schedule = "cosine"
  config.validation_fraction = 0.1
  config.keep_best_checkpoints = 1
  config.best_metric = "validation_accuracy"
  return config
