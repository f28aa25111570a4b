"""The Keras tutorial on the embedded dataset: 5,000 real MNIST digits (4,000 train).

Conv(32, 3x3) -> MaxPool 2x2 -> Dense(64) -> Dense(10), Adam 1e-3, batch 32, 5 epochs.

  ./run.sh train --config experiments/seed_cnn.py --workdir runs/seed_cnn
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = "seed_cnn"
  config.model_kwargs = ml_collections.ConfigDict()
  config.dataset = "mnist_5k"
  # None: TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
  config.data_dir = ml_collections.FieldReference(None, field_type=str)
  # Split specs as tfds.load reads them ("train", "train[:90%]", "train+test", ...).
  config.train_split = "train"
  config.test_split = "test"
  # A validation split: a spec of the dataset's own (e.g. "validation"), or a share of
  # train_split held out, stratified by class, the same in every run (e.g. 0.1). At
  # most one of the two; "" and 0 for none (the tutorial trains on all of train).
  config.validation_split = ""
  config.validation_fraction = 0.0
  # "in_memory" (whole splits on the devices), "streaming" (Grain, chunk by chunk) or
  # "auto": in memory when the decoded train split is at most in_memory_max_bytes.
  # Splits of at most in_memory_max_bytes are also kept decoded on disk beside the
  # prepared dataset (cnn_jax/data/cache.py).
  config.input_pipeline = "auto"
  config.in_memory_max_bytes = 2 * 1024**3
  # Streaming only: Grain worker processes that read and decode batches (0: threads of
  # the training process, enough for cached data).
  config.data_workers = 0
  # Only for config.dataset = "folder:/path" (class subfolders of images): every image
  # is converted to this (height, width, channels); a single tree of class folders is
  # split with this share of each class as test; unreadable files: "skip" or "error".
  config.image_size = (28, 28, 1)
  config.folder_test_fraction = 0.2
  config.on_bad_image = "skip"
  # Training-time augmentation (cnn_jax.data.augment), off in the tutorial: pixels of
  # zero padding before a random crop back to size (0: no crop), random left-right flip.
  config.crop_padding = 0
  config.flip = False
  # Per-channel (x - mean) / std with statistics of the training split, after / 255.
  config.normalize = False

  config.batch_size = 32
  # Measured on a 2-core CPU: the tutorial CNN evaluates at about 40,000 img/s in
  # batches of 250 and 20,000 in batches of 1,000, whose activations (86 MB in the
  # first layer) no longer fit the CPU's caches. A multiple of 8 devices; metrics do
  # not depend on it.
  config.eval_batch_size = 256
  config.num_epochs = 5
  config.learning_rate = 1e-3
  # Learning rate over the run (cnn_jax/optim.py:SCHEDULES): "constant" (the tutorial)
  # or "cosine" (down to 0 at the last step), after warmup_epochs of linear warm-up.
  config.lr_schedule = "constant"
  config.warmup_epochs = 0
  # Optimizer (cnn_jax/optim.py:OPTIMIZERS): "adam" (the tutorial's), "adamw" or "sgd";
  # optimizer_kwargs: its arguments (adam, adamw: b1, b2, eps; sgd: momentum (0.9),
  # nesterov). weight_decay: decoupled for adamw, an L2 term for the others, never on
  # biases or normalisation parameters. grad_clip_norm: global-norm clipping (0: off).
  config.optimizer = "adam"
  config.optimizer_kwargs = ml_collections.ConfigDict()
  config.weight_decay = 0.0
  config.grad_clip_norm = 0.0
  # Regularisation: label smoothing; mixup and cutmix (Beta(alpha, alpha) ratios, on the
  # device from the step's key; both set: one or the other per batch; 0: off).
  config.label_smoothing = 0.0
  config.mixup_alpha = 0.0
  config.cutmix_alpha = 0.0
  # Split each batch into this many micro-batches whose gradients make one update.
  config.grad_accum_steps = 1
  # Keep an exponential moving average of the weights (0: off); every evaluator then
  # runs on it too, as <name>_ema.
  config.ema_decay = 0.0
  # Computation dtype of activations, matmuls and convolutions (cnn_jax/models:DTYPES):
  # "float32" or "bfloat16" (mixed precision: parameters, optimizer state and the loss
  # stay float32; on CPU it is slower, see the README).
  config.dtype = "float32"
  config.seed = 0
  # Training steps run per dispatch to the device (lax.scan); also the progress bar's tick.
  config.steps_per_dispatch = 50
  # Stop (keeping the last checkpoint, exit 3) when a dispatch's training loss is NaN,
  # infinite or above divergence_factor x ln(classes), the loss of a uniform guess
  # (0: NaN/inf only).
  config.divergence_factor = 10.0

  # Evaluators (cnn_jax/evaluators.py): a named split, every N epochs (and after the
  # last), metrics among loss, accuracy, top_k, per_class (precision/recall/F1, macro
  # F1) and confusion (kept in evals/<name>/<step>.json). Their scalars go into the
  # epoch records as <name>_loss, <name>_accuracy, <name>_top<k>_accuracy, ...
  config.evals = ml_collections.ConfigDict()
  config.evals.test = dict(split="test", every_epochs=1, top_k=5,
                           metrics=("loss", "accuracy", "top_k", "per_class", "confusion"))

  # Also save every N steps inside an epoch (0: at epoch ends only).
  config.checkpoint_every_steps = 0
  config.keep_checkpoints = 2
  # Selection: keep the best keep_best_checkpoints by best_metric, a metric of an
  # evaluator of a split other than test (e.g. "validation_accuracy"). The tutorial
  # trains on all of train and reports test, so it keeps the latest checkpoints only.
  config.keep_best_checkpoints = 0
  config.best_metric = ""
  config.best_mode = "max"
  return config
