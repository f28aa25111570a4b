"""`./run.sh bench`: our training speed against the same networks in Keras, same CPU
(and with `--gpu`, against PyTorch on a GPU: gpu.py).

Method (issue 14):
- Cells (plan.CELLS): the tutorial CNN at batch 32 and 128, VGG-BN and ResNet-20 at
  batch 128. Both sides train the same network (same layers and parameter count;
  the tests copy our initial weights into the Keras model and compare the loss) on
  the same random uint8 images / 255 as float32, with Adam 1e-3 and no augmentation.
  Ours is the runner's compiled chunk of steps (`run.compile_train_chunk`, the
  experiment's steps per dispatch); Keras is `model.fit`.
- Steady state is detected, not assumed: each measurement times windows of a known
  number of steps until two in a row agree within a tolerance (method.SteadyState)
  and reports how many windows it discarded before them.
- Keras at its best and as shipped: its defaults (steps_per_execution 1, jit_compile
  "auto"), then each steps_per_execution of the cell with and without XLA, one
  measurement each; the defaults and every setting within 5% of the fastest are
  then measured again with ours, interleaved (ours, Keras, ours, Keras, ...) for
  several repetitions. Cells give the median and min-max over repetitions; the ratio
  that counts is ours against the fastest Keras setting, each side's best steady
  measurement (method.best_rate), the medians' ratio beside it; the fastest setting
  is the one with that best measurement (cli.fastest_row). Ours in bfloat16 is
  timed in the same repetitions where a cell asks (plan.Cell.bf16).
- Each framework runs in its own worker process, set up once per cell (workers.py).
- End to end (e2e.py): the 5-epoch tutorial job, ours against the Keras tutorial
  script as shipped and at its best, each a fresh process, interleaved.
- Time to accuracy (speedrun.py, `--speedrun`): the speedrun recipe against its Keras
  twin, each seed a fresh process timed to its final test accuracy, interleaved.
- The machine's load is recorded before, during and after; a busy machine is named in
  the output's warnings. The CPU compute floor of the tutorial CNN is computed from a
  measured matmul peak and the training FLOPs per image; each cell's target is also
  given as the share of its own floor that it needs (cli.cell_floor).

  ./run.sh bench [--quick] [--cells seed_cnn/32,vgg_bn] [--data-dir DIR]
      [--out docs/bench_latest.json]
  ./run.sh bench --markdown docs/bench_latest.json   # the tables of an earlier run
  ./run.sh bench --speedrun   # time to accuracy against Keras (speedrun.py)
  python -m benchmarks --gpu                       # on a GPU machine with torch
"""
