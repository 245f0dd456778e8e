"""Seeded example generators for the NRAM tasks (Kurach et al. 2015, arXiv:1511.06392, App. A).

An example is a memory of ``M`` cells holding integers in {0..M-1}: the input ``memory``
[M], the ``target`` [M] the cells should hold at the end and a ``mask`` [M] (True on the
cells that are scored). NULL is 0. The difficulty of an example is its ``length`` (list or
array length), the quantity the curriculum raises.

  access     ``k, A[0..n-1], NULL``; the answer A[k] goes to cell 0. k ~ U{0..n-1}.
  increment  ``A[0..n-1], NULL``; cells 0..n-1 become (A[i] + 1) mod M.
  listk      ``head, k, out = 2`` then n list nodes ``[next, value]`` in the cell pairs
             (3, 4), (5, 6), ... at random distinct pairs; the last node's next is NULL.
             The value of the node k hops from the head (k ~ U{0..n-1}) goes to cell 2.
Values (A[i], node values) are uniform in {1..M-1}. Cells no example uses hold 0. The
paper gives the ListK layout ``head, k, out`` and NULL = 0; that ``out`` = 2 (the answer
overwrites cell 2), the pair slots and the value range are UNCONFIRMED choices shared with
the public reimplementations (DENN-LITE ``TaskListK``, denn-lite-nram-executor).
"""

from __future__ import annotations

import numpy as np

TASKS = ("access", "increment", "listk")
LISTK_HEADER = 3  # head, k, out


def max_length(task: str, memory_size: int) -> int:
  """The longest list/array that fits in ``memory_size`` cells.

  Raises ValueError for an unknown task.
  """
  if task == "access":
    return memory_size - 2  # k, A, NULL
  if task == "increment":
    return memory_size - 1  # A, NULL
  if task == "listk":
    return (memory_size - LISTK_HEADER) // 2
  raise ValueError(f"unknown NRAM task {task!r}; accepted: {', '.join(TASKS)}.")


def examples(task: str, length: int, n: int, memory_size: int,
             rng: np.random.Generator) -> dict[str, np.ndarray]:
  """``n`` examples of one ``length``: memory, target [n, M] (int8) and mask [n, M] (bool).

  Raises ValueError when ``length`` is not in [1, max_length(task, memory_size)] or
  memory_size > 127 (int8 cells).
  """
  if memory_size > 127 or not 1 <= length <= max_length(task, memory_size):
    raise ValueError(f"{task}: length {length} does not fit in {memory_size} cells (at most "
                     f"{max_length(task, memory_size)}; memory at most 127).")
  rows = np.arange(n)[:, None]
  memory = np.zeros((n, memory_size), np.int64)
  mask = np.zeros((n, memory_size), bool)
  values = rng.integers(1, memory_size, (n, length))
  if task == "increment":
    memory[:, :length] = values
    target = memory.copy()
    target[:, :length] = (values + 1) % memory_size
    mask[:, :length] = True
  else:
    k = rng.integers(0, length, n)
    if task == "access":
      memory[:, 0] = k
      memory[:, 1:length + 1] = values
      out = 0
    else:
      slots = np.argsort(rng.random((n, max_length(task, memory_size))), axis=1)[:, :length]
      address = LISTK_HEADER + 2 * slots
      memory[rows, address] = np.concatenate([address[:, 1:], np.zeros((n, 1), int)], 1)
      memory[rows, address + 1] = values
      memory[:, 0], memory[:, 1], memory[:, 2] = address[:, 0], k, 2
      out = 2
    target = memory.copy()
    target[:, out] = values[np.arange(n), k]
    mask[:, out] = True
  return {"memory": memory.astype(np.int8), "target": target.astype(np.int8), "mask": mask}


def training_pool(task: str, lengths: int, n: int, memory_size: int,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Arrays [n, lengths, M]: row d - 1 of each entry is an independent example of length d,
  so a batch taken by index can pick any length per example (the curriculum picks the row).
  """
  rows = [examples(task, d, n, memory_size, rng) for d in range(1, lengths + 1)]
  return {k: np.stack([r[k] for r in rows], 1) for k in rows[0]}
