"""A TFDS dataset from a folder of images sorted into one subfolder per class.

`config.dataset = "folder:/path/to/root"` reads either layout:

  root/train/<class>/*.png|jpg|jpeg    and    root/test/<class>/...
  root/<class>/*.png|jpg|jpeg          split here into train and test

A single tree is split per class (stratified) by sorted file names: of each class's
n images, round(n * test_fraction) (at least one) evenly spaced ones go to `test`.
Images are decoded, converted to the configured channels and resized to the configured
(height, width). Label names are the sorted subfolder names.

The prepared dataset lives in `data_dir/image_folder/<folder>_<hash>/1.0.0`; the hash
covers the folder's path, its file names, sizes and modification times, and the
options, so a changed folder or option is prepared afresh.
"""

import dataclasses
import functools
import hashlib
import os
import re

import tensorflow_datasets as tfds

from cnn_jax.data.tfds_base import (DatasetError, default_data_dir, download_and_prepare,
                                    new_or_prepared, tensorflow)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
BAD_IMAGE_MODES = ("skip", "error")
SPLIT_DIRS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class FolderOptions:
  """How to turn a folder of images into a dataset.

  Attributes:
    image_size: (height, width, channels) every image is converted to; channels 1
      (grayscale) or 3 (RGB).
    test_fraction: share of each class held out as `test` when the folder has no
      train/ and test/ subfolders; in (0, 1).
    on_bad_image: "skip" a file that is not a readable image (and print how many were
      skipped), or "error" (stop, naming the file).
  """
  image_size: tuple[int, int, int] = (28, 28, 1)
  test_fraction: float = 0.2
  on_bad_image: str = "skip"

  def __post_init__(self):
    size = tuple(self.image_size)
    if (len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size)
        or size[2] not in (1, 3)):
      raise DatasetError(
          f"image_size={self.image_size!r}: expected (height, width, channels) with "
          "positive integers and channels 1 (grayscale) or 3 (RGB), e.g. (28, 28, 1).")
    object.__setattr__(self, "image_size", size)
    if not 0 < self.test_fraction < 1:
      raise DatasetError(
          f"test_fraction={self.test_fraction!r}: expected a number between 0 and 1 "
          "(exclusive), e.g. 0.2.")
    if self.on_bad_image not in BAD_IMAGE_MODES:
      raise DatasetError(
          f"on_bad_image={self.on_bad_image!r}: expected one of {BAD_IMAGE_MODES}.")


@dataclasses.dataclass(frozen=True)
class FolderScan:
  """The files of an image folder, assigned to splits and labels."""
  root: str
  classes: tuple[str, ...]
  splits: dict[str, list[tuple[str, int]]]  # split -> [(path, label)]
  ignored: tuple[str, ...]  # files without an image extension
  fingerprint: str  # hash of every file's name, size and modification time


def _list_class_dir(path: str) -> tuple[list[str], list[str]]:
  """Returns (image files, other files) under a class folder, recursively, sorted."""
  images, others = [], []
  for dirpath, dirnames, filenames in os.walk(path):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    for f in sorted(filenames):
      if f.startswith("."):
        continue
      full = os.path.join(dirpath, f)
      (images if f.lower().endswith(IMAGE_EXTENSIONS) else others).append(full)
  return sorted(images), others


def _class_dirs(path: str) -> list[str]:
  return sorted(d for d in os.listdir(path)
                if not d.startswith(".") and os.path.isdir(os.path.join(path, d)))


def _read_tree(path: str) -> tuple[dict[str, list[str]], list[str]]:
  """Returns ({class: image files}, ignored files) of a folder of class folders."""
  stray = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
  if stray:
    raise DatasetError(
        f"{path} holds images directly ({os.path.join(path, stray[0])}, "
        f"{len(stray)} in all); images must be in one subfolder per class, "
        f"e.g. {os.path.join(path, 'cat', stray[0])}.")
  classes = _class_dirs(path)
  if len(classes) < 2:
    raise DatasetError(
        f"{path} has {len(classes)} class subfolder(s) ({', '.join(classes) or 'none'})"
        "; a classification dataset needs at least two, one subfolder per class "
        "holding its images.")
  files, ignored = {}, []
  for name in classes:
    images, others = _list_class_dir(os.path.join(path, name))
    ignored += others
    if not images:
      raise DatasetError(
          f"Class folder {os.path.join(path, name)} holds no image "
          f"({'/'.join(IMAGE_EXTENSIONS)}); add images or remove the folder.")
    files[name] = images
  return files, ignored


def test_indices(n: int, test_fraction: float) -> list[int]:
  """Evenly spaced indices of the round(n * fraction) (at least 1) test items of n."""
  n_test = min(n - 1, max(1, round(n * test_fraction)))
  return [int((j + 0.5) * n / n_test) for j in range(n_test)]


def scan_folder(root: str, options: FolderOptions) -> FolderScan:
  """Lists a folder's images by split and class, checking the layout.

  Raises:
    DatasetError: the folder is missing, has fewer than two classes, an empty class
      folder, train/ and test/ with different classes, or a class too small to split.
  """
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise DatasetError(
        f"Image folder {root} does not exist or is not a directory. Set "
        "config.dataset = 'folder:/path/to/root', with root/<class>/*.png or "
        "root/train/<class>/... and root/test/<class>/...")
  present = [d for d in SPLIT_DIRS if os.path.isdir(os.path.join(root, d))]
  splits = {"train": [], "test": []}
  if present:
    if len(present) == 1:
      missing = os.path.join(root, ({"train", "test"} - set(present)).pop())
      raise DatasetError(
          f"{os.path.join(root, present[0])} exists but {missing} does not. Add it "
          "with the same class subfolders, or put the class folders directly in "
          f"{root} to have them split by test_fraction.")
    train, ignored = _read_tree(os.path.join(root, "train"))
    test, ignored_test = _read_tree(os.path.join(root, "test"))
    ignored += ignored_test
    if set(train) != set(test):
      raise DatasetError(
          f"train/ and test/ of {root} have different classes: only in train: "
          f"{sorted(set(train) - set(test)) or 'none'}, only in test: "
          f"{sorted(set(test) - set(train)) or 'none'}. Both need the same class "
          "subfolders.")
    classes = tuple(sorted(train))
    for label, name in enumerate(classes):
      splits["train"] += [(p, label) for p in train[name]]
      splits["test"] += [(p, label) for p in test[name]]
  else:
    tree, ignored = _read_tree(root)
    classes = tuple(sorted(tree))
    for label, name in enumerate(classes):
      files = tree[name]
      if len(files) < 2:
        raise DatasetError(
            f"Class folder {os.path.join(root, name)} holds {len(files)} image; "
            "splitting into train and test needs at least two per class. Add images, "
            "or give the folder train/ and test/ subfolders.")
      held_out = set(test_indices(len(files), options.test_fraction))
      for i, path in enumerate(files):
        splits["test" if i in held_out else "train"].append((path, label))
  digest = hashlib.sha1()
  for split in SPLIT_DIRS:
    for path, label in splits[split]:
      stat = os.stat(path)
      digest.update(f"{split}|{os.path.relpath(path, root)}|{label}|{stat.st_size}|"
                    f"{stat.st_mtime_ns}\n".encode())
  return FolderScan(root=root, classes=classes, splits=splits, ignored=tuple(ignored),
                    fingerprint=digest.hexdigest())


def config_name(scan: FolderScan, options: FolderOptions) -> str:
  """Folder name of the prepared dataset: readable prefix, then a content hash."""
  identity = hashlib.sha1(
      f"{scan.root}|{scan.fingerprint}|{options.image_size}|{options.test_fraction}|"
      f"{options.on_bad_image}".encode()).hexdigest()[:12]
  slug = re.sub(r"[^a-z0-9]+", "_", os.path.basename(scan.root).lower()).strip("_")
  return f"{slug or 'root'}_{identity}"


def decode_image(path: str, image_size: tuple[int, int, int]):
  """Returns the image at `path` as uint8 numpy (H, W, C) of `image_size`.

  Raises:
    ValueError: the file is not a readable image.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  height, width, channels = image_size
  try:
    image = tf.io.decode_image(tf.io.read_file(path), channels=channels,
                               expand_animations=False)
  except tf.errors.OpError as e:
    raise ValueError(e.message.splitlines()[0]) from e
  if tuple(image.shape[:2]) != (height, width):
    image = tf.image.resize(image, (height, width), antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  return image.numpy()


class ImageFolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Images from class subfolders; one builder config per folder state and options."""

  name = "image_folder"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Class subfolders, resized, stratified split."}

  def __init__(self, *, scan: FolderScan, options: FolderOptions,
               data_dir: str | None = None, file_format: str | None = None):
    self.scan = scan
    self.options = options
    self.skipped: dict[str, list[str]] = {"train": [], "test": []}
    super().__init__(data_dir=data_dir, file_format=file_format,
                     config=tfds.core.BuilderConfig(
                         name=config_name(scan, options), version=self.VERSION,
                         description=f"Images of {scan.root}"))
    self._original_state = dict(scan=scan, options=options, data_dir=data_dir,
                                file_format=file_format)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Images of {self.scan.root}, one subfolder per class.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=self.options.image_size),
            "label": tfds.features.ClassLabel(names=list(self.scan.classes)),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the images are local.
    return {split: self._generate_examples(split) for split in SPLIT_DIRS}

  def _generate_examples(self, split: str):
    seen = set()
    for path, label in self.scan.splits[split]:
      try:
        image = decode_image(path, self.options.image_size)
      except ValueError as e:
        if self.options.on_bad_image == "error":
          raise DatasetError(
              f"{path} is not a readable image ({e}). Remove or replace it, or set "
              "config.on_bad_image='skip' to leave such files out.") from e
        self.skipped[split].append(path)
        continue
      seen.add(label)
      yield os.path.relpath(path, self.scan.root), {"image": image, "label": label}
    missing = [self.scan.classes[c] for c in range(len(self.scan.classes))
               if c not in seen]
    if missing:
      raise DatasetError(
          f"Split {split!r} of {self.scan.root} has no readable image of class(es) "
          f"{', '.join(missing)} ({len(self.skipped[split])} unreadable file(s) "
          "skipped). Add readable images to those class folders.")


def prepared_dir(root: str, data_dir: str | None, options: FolderOptions) -> str:
  """Where the image folder `root`, as it is now, is (or would be) prepared."""
  config = config_name(scan_folder(root, options), options)
  return os.path.join(os.path.expanduser(data_dir or default_data_dir()),
                      ImageFolderBuilder.name, config, str(ImageFolderBuilder.VERSION))


def get_builder(root: str, data_dir: str | None, options: FolderOptions):
  """Returns the prepared builder of the image folder `root`, preparing it if needed."""
  tensorflow()  # Before any other TF use: hides accelerators from TensorFlow.
  scan = scan_folder(root, options)
  builder = new_or_prepared(functools.partial(ImageFolderBuilder, scan=scan,
                                              options=options, data_dir=data_dir))
  if builder.is_prepared():
    return builder
  if scan.ignored:
    print(f"Ignoring {len(scan.ignored)} file(s) without an image extension "
          f"({'/'.join(IMAGE_EXTENSIONS)}), e.g. {scan.ignored[0]}.")
  download_and_prepare(
      builder, download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  skipped = builder.skipped["train"] + builder.skipped["test"]
  if skipped:
    print(f"Skipped {len(skipped)} unreadable image file(s) of {scan.root} "
          f"({len(builder.skipped['train'])} train, {len(builder.skipped['test'])} "
          f"test), e.g. {skipped[0]}.")
  return builder
