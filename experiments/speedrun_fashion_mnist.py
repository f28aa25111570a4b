"""Time to accuracy on Fashion-MNIST: the speedrun recipe (`./run.sh speedrun`).

A small CNN (models/fast_cnn.py: the tutorial's first layer on the image padded by
one pixel, Conv 3x3 32 + ReLU -> max-pool; then Conv 3x3 64 -> max-pool -> BatchNorm
-> ReLU; Dense 256 -> BatchNorm -> ReLU -> Dense 10; 824,778 parameters) trained with
what the speedrun literature found (airbench, hlb-CIFAR10) and what paid here:
pooling before the normalisation, BatchNorm, Adam 3e-3 with a short linear warm-up
(0.3 epochs) and a cosine decay to 0, label smoothing 0.1. Batch 128, 4 epochs. The
test split is evaluated once, at the end. Random flips with flip test-time
augmentation did not pay at this length (on the previous network: validation 0.9375
against 0.9391 without, 3 seeds each) and a moving average of the weights gave nothing
on top of the decay to 0; both are one line away (`config.flip = True` with
`config.evals.test.tta = "flip"`; `config.ema_decay` with `config.evals.test.ema`).
With flips and flip TTA for 10 epochs it is the curve's 0.940 point (docs/speedrun.md).

Chosen on a validation split only (10% of train held out, stratified; every choice
and what it measured: docs/speedrun.md); the numbers reported train on all of train
with the recipe fixed and report test. Channel counts are multiples of 16, which
oneDNN's AVX-512 kernels fill (widths 16 or 24 trained at half the FLOP rate).

  ./run.sh speedrun                    # 5 seeds, each timed from process start
  ./run.sh speedrun --epochs 2,3,4,6,10  # the time/accuracy curve
  ./run.sh bench --speedrun            # against the same recipe in Keras

TFDS downloads fashion_mnist where it can; offline, prepare it once from its IDX
files (Debian: apt-get install dataset-fashion-mnist):

  ./run.sh prepare fashion_mnist --from /usr/share/datasets/fashion-mnist
"""

from experiments import seed_cnn


def get_config():
  config = seed_cnn.get_config()
  config.dataset = "fashion_mnist"
  config.model = "fast_cnn"
  config.model_kwargs = dict(widths=(32, 64), hidden=256)
  config.batch_size = 128
  config.num_epochs = 4
  config.optimizer = "adam"
  config.learning_rate = 3e-3
  config.lr_schedule = "cosine"
  config.warmup_epochs = 0.3
  config.label_smoothing = 0.1
  # One evaluation, after the last epoch (tta and ema listed: overridable).
  config.evals = dict(test=dict(split="test", every_epochs=1000, tta="none", ema=False,
                                metrics=("loss", "accuracy")))
  config.keep_checkpoints = 1
  return config
