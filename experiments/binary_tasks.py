"""Binary addition and multiplication examples for the Neural GPU (Kaiser & Sutskever 2015).

An example with ``k``-bit operands a, b (random bits, leading zeros allowed, as the
reference ``data_utils.rand_pair``) is the input sequence

    a_0 ... a_{k-1}  OP  b_0 ... b_{k-1}  PAD ...         (bits least significant first)

of ``2k + 1`` symbols, and the target is the result's bits, least significant first,
without leading zeros (the result 0 is the single bit 0), then padding. Both are padded
to a fixed length. The result of k-bit operands has at most 2k bits, so it always fits
under the input (the Neural GPU writes its output in place of its input).
"""

from __future__ import annotations

import numpy as np

PAD, BIT0, BIT1, OP = 0, 1, 2, 3
INPUT_SYMBOLS = 4  # pad, bit 0, bit 1, operator
OUTPUT_SYMBOLS = 3  # pad, bit 0, bit 1
TASKS = ("add", "mul")


def sequence_length(bits: int) -> int:
  """Input length of an example with ``bits``-bit operands: two operands and the operator."""
  return 2 * bits + 1


def _propagate_carries(column_sums: np.ndarray) -> np.ndarray:
  """Bits of sum_i column_sums[:, i] * 2^i, as many as there are columns."""
  out = np.zeros_like(column_sums)
  carry = np.zeros(len(column_sums), column_sums.dtype)
  for i in range(column_sums.shape[1]):
    total = column_sums[:, i] + carry
    out[:, i], carry = total % 2, total // 2
  return out


def result_bits(task: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Bits [n, 2k] (LSB first, zero-filled) of a + b or a * b for operand bits [n, k]."""
  n, k = a.shape
  a, b = a.astype(np.int64), b.astype(np.int64)
  columns = np.zeros((n, 2 * k), np.int64)
  if task == "add":
    columns[:, :k] = a + b
  else:  # schoolbook multiplication: column i + j collects a_i * b_j
    for i in range(k):
      columns[:, i:i + k] += a[:, i:i + 1] * b
  return _propagate_carries(columns)


def encode(task: str, a: np.ndarray, b: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
  """Input and target symbols [n, length] (int8) for operand bits a, b [n, k]."""
  n, k = a.shape
  if sequence_length(k) > length:
    raise ValueError(f"{k}-bit operands need length >= {sequence_length(k)}, got {length}.")
  inputs = np.full((n, length), PAD, np.int8)
  inputs[:, :k] = a + BIT0
  inputs[:, k] = OP
  inputs[:, k + 1:2 * k + 1] = b + BIT0
  bits = result_bits(task, a, b)
  # Significant bits: up to the highest set bit, and at least one (for a result of 0).
  highest = np.where(bits.any(1), 2 * k - 1 - np.argmax(bits[:, ::-1], axis=1), 0)
  targets = np.full((n, length), PAD, np.int8)
  significant = np.arange(2 * k) <= highest[:, None]
  targets[:, :2 * k] = np.where(significant, bits + BIT0, PAD)
  return inputs, targets


def examples(task: str, bits: int, n: int, length: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """``n`` random examples with ``bits``-bit operands, padded to ``length``."""
  a = rng.integers(0, 2, (n, bits), dtype=np.int8)
  b = rng.integers(0, 2, (n, bits), dtype=np.int8)
  return encode(task, a, b, length)


def training_pool(task: str, max_bits: int, n: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Inputs and targets [n, max_bits, sequence_length(max_bits)]: row k - 1 of each entry
  holds an independent example with k-bit operands, so a batch taken by index can pick any
  operand length per example (the curriculum chooses which row)."""
  length = sequence_length(max_bits)
  rows = [examples(task, k, n, length, rng) for k in range(1, max_bits + 1)]
  return np.stack([r[0] for r in rows], 1), np.stack([r[1] for r in rows], 1)


def decode_number(symbols: np.ndarray) -> int:
  """The number written by bit symbols (LSB first), up to the first non-bit symbol."""
  value = 0
  for i, s in enumerate(symbols):
    if s not in (BIT0, BIT1):
      break
    value |= int(s == BIT1) << i
  return value
