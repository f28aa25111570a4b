"""The bench's tables in Markdown, from its JSON alone: what a run prints and what
`./run.sh bench --markdown FILE` prints for docs/performance.md are the same text."""

from benchmarks import plan

MODEL_NAMES = {"seed_cnn": "tutorial CNN", "vgg_bn": "VGG-BN", "resnet20": "ResNet-20"}
# The header's word on the vector width (the machine record's "avx512": unknown is None).
_AVX512 = {True: ", AVX-512", False: ", no AVX-512"}


def _n(value: float) -> str:
  return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _cell(s: dict, fmt=_n) -> str:
  """'median (min-max)' of a method.spread."""
  if s["n"] == 1:
    return fmt(s["median"])
  return f"{fmt(s['median'])} ({fmt(s['min'])}-{fmt(s['max'])})"


def _ratio(value: float) -> str:
  return f"{value:.2f}x"


def _paired(s: dict) -> str:
  """The min-max of per-repetition ratios (ours and Keras run one after the other)."""
  return f"paired {s['min']:.2f}-{s['max']:.2f}x" if s["n"] > 1 else "1 rep"


def _discarded(row: dict) -> str:
  mark = "" if row["steady"] else " (not steady)"
  return "/".join(str(d) for d in row["discarded"]) + mark


def _load(load: dict) -> str:
  if "others_share" not in load:
    return f"load average {load['load_average_before'][0]:.2f}"
  return (f"others {load['others_share']:.0%} of the CPU, steal "
          f"{load['steal_share']:.0%}, load average "
          f"{load['load_average_before'][0]:.2f} -> {load['load_average_after'][0]:.2f}")


def header(results: dict) -> list[str]:
  m, s = results["machine"], results["settings"]
  cell = next(iter(results["cells"]), None)
  versions = []
  if cell:
    versions = [f"jax {cell['ours']['jax']}", f"TensorFlow {cell['keras']['tensorflow']}",
                f"Keras {cell['keras']['keras']}"]
  return [
      f"Run of {results['date']} on {m['cpu']}, {m['cores']} cores"
      f"{_AVX512.get(m.get('avx512'), '')}, Python {m['python']}"
      + (", " + ", ".join(versions) if versions else "") + f"; {results['total_sec'] / 60:.1f} min.",
      _method(s) + " The ratio that counts is each side's best steady measurement (for "
      "Keras, over its repetitions and its tuning measurement too): a disturbed "
      "repetition of either side cannot move it.",
      f"Machine idle check before: {_load(results['idle_before'])}; after: "
      f"{_load(results['idle_after'])}; during the run: {_load(results['load'])}.",
  ]


def _method(s: dict) -> str:
  """The steady-state method of a run's `settings`, in a sentence."""
  return (f"Steady state: windows until two in a row agree within {s['tolerance']:.0%} "
          f"(at most {s['max_windows']} windows or {s['max_seconds']:.0f} s); "
          f"{s['reps']} interleaved repetition(s) per row; cells give the median "
          "(min-max) over repetitions.")


def steady_table(results: dict) -> list[str]:
  lines = ["| model, batch | ours img/s | Keras defaults img/s | fastest Keras img/s "
           "(settings) | best / best: ours / Keras | medians' ratio (paired reps) "
           "| target |", "|---|---|---|---|---|---|---|"]
  for cell in results["cells"]:
    rows = cell["keras"]["rows"]
    fastest = next(r for r in rows if r["name"] == cell["keras"]["fastest"])
    target = (f">= {cell['target']}x: {'pass' if cell['ratio'] >= cell['target'] else 'FAIL'}"
              if cell["target"] else "-")
    lines.append(
        f"| {MODEL_NAMES.get(cell['model'], cell['model'].rsplit(':', 1)[-1])}, {cell['batch_size']} "
        f"| {_cell(cell['ours']['images_per_sec'])} "
        f"| {_cell(rows[0]['images_per_sec'])} "
        f"| {_cell(fastest['images_per_sec'])} ({fastest['name']}) "
        f"| **{_ratio(cell['ratio'])}** ({_n(cell['ours']['best'])} / "
        f"{_n(cell['keras_best'])}) "
        f"| {_ratio(cell['ratio_median'])} ({_paired(cell['ratio_paired'])}) "
        f"| {target} |")
  return lines


def details_table(results: dict) -> list[str]:
  lines = ["| model, batch | window | ours: steps/dispatch, compile s, windows discarded "
           "| Keras tuning (one measurement each), img/s | Keras windows discarded "
           "| peak RSS MB ours / Keras | load during the cell |",
           "|---|---|---|---|---|---|---|"]
  for cell in results["cells"]:
    o, k = cell["ours"], cell["keras"]
    tuning = "; ".join(f"{t['name']} {_n(t['images_per_sec'])}" for t in k["tuning"])
    keras_discarded = "; ".join(f"{r['name']}: {_discarded(r)}" for r in k["rows"])
    rss = max(r["peak_rss_mb"] for r in o["reps"]), max(
        r["peak_rss_mb"] for row in k["rows"] for r in row["reps"])
    lines.append(
        f"| {cell['name']} | {cell['window_steps']} steps | {o['steps_per_dispatch']}, "
        f"{o['compile_sec']:.1f}, {_discarded(o)} | {tuning} | {keras_discarded} "
        f"| {rss[0]:,.0f} / {rss[1]:,.0f} | {_load(cell['load'])} |")
  return lines


def bf16_lines(results: dict) -> list[str]:
  """Our bfloat16 (config.dtype) against our float32 in the same cells."""
  cells = [c for c in results["cells"] if c.get("ours_bfloat16")]
  if not cells:
    return []
  lines = ["Ours in mixed precision (`--config.dtype=bfloat16`), the same repetitions:",
           "",
           "| model, batch | float32 img/s | bfloat16 img/s | bfloat16 / float32 |",
           "|---|---|---|---|"]
  for cell in cells:
    f32, b16 = cell["ours"]["images_per_sec"], cell["ours_bfloat16"]["images_per_sec"]
    lines.append(f"| {MODEL_NAMES.get(cell['model'], cell['model'].rsplit(':', 1)[-1])}, "
                 f"{cell['batch_size']} | {_cell(f32)} | {_cell(b16)} "
                 f"| {_ratio(b16['median'] / f32['median'])} |")
  return lines + [""]


def e2e_table(job: dict) -> list[str]:
  best_name = plan.config_name(job["keras_best_settings"]) + ", float32"
  acc = lambda runs: "/".join(f"{r['test_accuracy']:.4f}" for r in runs
                              if r["test_accuracy"] is not None)
  start = lambda runs: "/".join(f"{r['startup_sec']:.1f}" for r in runs
                                if r["startup_sec"] is not None)
  first = job.get("ours_first_run")  # Runs before the compilation cache lack it.
  lines = [f"End to end: the tutorial job, {job['epochs']} epoch(s) at batch "
           f"{job['batch_size']} on {job['dataset']}, test evaluated after each epoch on "
           + (f"both sides in batches of {job['eval_batch_size']}; " if first
              else "both sides; ")
           + f"each job a fresh process, start to exit; {job['reps']} "
           "interleaved repetition(s)"
           + ("; ours first ran once on an empty compilation cache, whose programs "
              "the repetitions then load." if first else "."), "",
           "| job | seconds | start-up s (to training) | test accuracy |",
           "|---|---|---|---|"]
  if first:
    lines.append(f"| ours, first run (compilation cache empty) | {first['seconds']:.1f} "
                 f"| {first['startup_sec']:.1f} | {first['test_accuracy']:.4f} |")
  for key, name in (("ours", "ours (`./run.sh` train, experiments/seed_cnn.py)"),
                    ("keras_defaults", "Keras tutorial as shipped"),
                    ("keras_best", f"Keras best ({best_name})")):
    runs = job[key]["runs"]
    lines.append(f"| {name} | {_cell(job[key]['seconds'], lambda v: f'{v:.1f}')} "
                 f"| {start(runs)} | {acc(runs)} |")
  later = lambda k: [v for r in job["ours"]["runs"] for v in r.get(k, [])[1:]]
  if later("eval_images_per_sec"):  # Runs before it was recorded lack it.
    lines += ["", "Ours, the epochs after the first of each job: training "
              f"{min(later('train_images_per_sec')):,.0f}-"
              f"{max(later('train_images_per_sec')):,.0f} img/s, evaluation "
              f"{min(later('eval_images_per_sec')):,.0f}-"
              f"{max(later('eval_images_per_sec')):,.0f} img/s (each epoch's line)."]
  fastest = "Keras as shipped" if job["fastest_keras"] == "keras_defaults" else "Keras best"
  lines += ["", f"Fastest Keras / ours, best job of each: **{_ratio(job['ratio'])}**; "
            f"medians' ratio against {fastest}: {_ratio(job['ratio_median'])} "
            f"({_paired(job['ratio_paired'])}); "
            + (f"fastest Keras / our first run: {_ratio(job['ratio_first_run'])}; "
               if first else "") + f"load: {_load(job['load'])}."]
  return lines


def targets_list(results: dict) -> list[str]:
  lines = []
  for t in results["targets"]:
    if t["value"] is None:
      lines.append(f"- {t['name']}: {t.get('note', 'not measured')}")
    elif t["target"] is None:
      lines.append(f"- {t['name']}: {t['value']:.0%}")
    else:
      floor = t.get("floor")
      lines.append(f"- {t['name']}: {_ratio(t['value'])} ({_paired(t['spread'])}), "
                   f"target >= {t['target']}x: "
                   f"**{'pass' if t['pass'] else 'FAIL'}**" + (
                       f"; the target needs {floor['needed']:.0%} of this cell's "
                       f"compute floor ({floor['images_per_sec']:,.0f} img/s), where "
                       f"ours reaches {floor['ours']:.0%} and fastest Keras "
                       f"{floor['keras']:.0%}" if floor else ""))
  floor = results.get("floor")
  if floor:
    lines.append(
        f"- floor: float32 matmul peak {floor['matmul_peak_flops'] / 1e9:,.0f} GFLOP/s "
        f"({results['matmul_peak']['best'].replace('_', ', size ')}); "
        f"training {floor['train_flops_per_image'] / 1e6:.2f} MFLOP per image (XLA's cost "
        f"analysis of our step; 3x forward: {floor['three_x_forward_flops'] / 1e6:.2f}) -> "
        f"floor {floor['floor_images_per_sec']:,.0f} img/s; ours "
        f"{floor['images_per_sec']:,.0f} img/s ({floor['cell']}), "
        f"{floor['achieved_flops'] / 1e9:,.0f} GFLOP/s")
  return lines


def gpu_markdown(results: dict) -> str:
  """A `--gpu` run's tables and targets as Markdown."""
  m, s, peak = results["machine"], results["settings"], results["matmul_peak"]
  cell = next(iter(results["cells"]), None)
  versions = ""
  if cell:
    rows = {r["name"]: r for r in cell["rows"]}
    versions = (f", jax {rows['ours float32']['jax']}, torch "
                f"{rows['torch eager float32, as shipped']['torch']}")
  lines = [
      f"Run of {results['date']} on {peak['device']} (host {m['cpu']}, {m['cores']} cores)"
      f"{versions}; {results['total_sec'] / 60:.1f} min.",
      _method(s) + " Matmul peak through JAX: float32 (default precision) "
      f"{peak['flops_per_sec']['float32'] / 1e12:,.0f} TFLOP/s, bfloat16 "
      f"{peak['flops_per_sec']['bfloat16'] / 1e12:,.0f} TFLOP/s.", ""]
  for cell in results["cells"]:
    c, counted = cell["check"], cell.get("train_flops_per_image")
    flops = (f" Training FLOPs per image: {counted / 1e6:,.1f} M (3x the forward's, "
             "counted on the CPU)." if counted else "")
    lines += [f"{MODEL_NAMES.get(cell['model'], cell['model'].rsplit(':', 1)[-1])}, batch "
              f"{cell['batch_size']}, images {tuple(cell['image_shape'])}, windows of "
              f"{cell['window_steps']} steps. Same network: {c['params_ours']:,} "
              f"parameters on both sides; loss on one batch from our weights "
              f"{c['loss_ours']:.6f} (ours) / {c['loss_torch']:.6f} (torch).{flops}", "",
              "| row | img/s | share of the matmul peak | windows discarded | "
              "set-up s (compile, warm-up) |", "|---|---|---|---|---|"]
    for r in cell["rows"]:
      share = f"{r['share_of_peak']:.1%}" if counted and r.get("share_of_peak") else "-"
      setup = r.get("compile_sec", r.get("warmup_sec"))
      lines.append(f"| {r['name']} | {_cell(r['images_per_sec'])} | {share} "
                   f"| {_discarded(r)} | {setup:.1f} |")
    q, m = cell["ratios"], cell.get("ratios_median", {})
    med = lambda key: f" (medians {_ratio(m[key])})" if key in m else ""
    lines += ["", f"Ours / torch.compile, best steady measurement of each: float32 "
              f"**{_ratio(q['float32'])}**{med('float32')}, bf16 "
              f"**{_ratio(q['bfloat16'])}**{med('bfloat16')}; fastest of ours "
              f"({q['ours_best']}) / fastest torch.compile **{_ratio(q['best'])}**"
              f"{med('best')}, / fastest torch row ({q['torch_best']}) "
              f"{_ratio(q['best_of_torch'])}{med('best_of_torch')}.", ""]
  lines += ["Targets:"] + [
      f"- {t['name']}: {_ratio(t['value'])}, target >= {t['target']}x: "
      f"**{'pass' if t['pass'] else 'FAIL'}**" for t in results["targets"]]
  if results["warnings"]:
    lines += ["", "WARNINGS:"] + [f"- {w}" for w in results["warnings"]]
  if results.get("notes"):
    lines += ["", f"Note: {results['notes']}"]
  return "\n".join(lines)


def markdown(results: dict) -> str:
  """The run's tables and targets as Markdown (a `--gpu` run's: `gpu_markdown`)."""
  if results.get("kind") == "gpu":
    return gpu_markdown(results)
  lines = header(results) + [""]
  if results["cells"]:
    lines += steady_table(results) + [""] + details_table(results) + [""]
    lines += bf16_lines(results)
  if results.get("end_to_end"):
    lines += e2e_table(results["end_to_end"]) + [""]
  lines += ["Targets:"] + targets_list(results)
  if results["warnings"]:
    lines += ["", "WARNINGS:"] + [f"- {w}" for w in results["warnings"]]
  return "\n".join(lines)
