"""The bAbI question-answering tasks (Weston et al. 2015, arXiv:1502.05698) as arrays.

Reads the official v1.2 release (``tasks_1-20_v1-2/{en,en-10k}/qa{N}_*_{train,test}.txt``).
Each line is ``ID text``; IDs restart at 1 with each new story. Question lines are
``ID question<TAB>answer<TAB>supporting fact IDs``. Tokens follow the MemN2N reference code
(Sukhbaatar et al. 2015, ``parseBabiTask.m``): split on white space, lower case, trailing
``.`` and ``?`` removed; the answer field is one token even when it is a comma-separated
list (tasks 8 and 19: ``football,apple``).

The memory of a question is the story's statements before it (questions are not stored),
at most the ``memory_size`` most recent. Arrays put the most recent sentence in memory slot
0; word id 0 is the empty word. The last 10% of each task's training questions are the
validation set, as in the reference. Several tasks load onto common shapes (one vocabulary,
sentence length and memory size), stacked on a leading task axis.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
from typing import Sequence

import numpy as np

from gradnoise.errors import UsageError

BABI_SETS = ("en", "en-10k")
TASKS = tuple(range(1, 21))
NIL = "<nil>"  # word id 0: empty word / empty memory slot
VALID_FRACTION = 0.1
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass(frozen=True)
class Example:
  """One question with its story so far: sentences are lists of tokens."""

  memories: list[list[str]]  # the story's statements before the question, oldest first
  query: list[str]
  answer: str


@dataclasses.dataclass(frozen=True)
class BabiData:
  """Vectorised tasks on common shapes.

  Attributes:
    splits: ``train`` / ``valid`` / ``test`` -> ``{"stories": [T, N, M, S],
      "queries": [T, N, S], "answers": [T, N]}`` int32, task axis in ``tasks`` order.
    vocab: word of each id; ``vocab[0]`` is the empty word.
    tasks: the task ids loaded.
    description: one line for the run plan.
  """

  splits: dict[str, dict[str, np.ndarray]]
  vocab: list[str]
  tasks: tuple[int, ...]
  description: str

  @property
  def memory_size(self) -> int:
    return self.splits["train"]["stories"].shape[2]

  @property
  def sentence_len(self) -> int:
    return self.splits["train"]["stories"].shape[3]


def tokenize(text: str) -> list[str]:
  """Lower-cased words with trailing ``.`` and ``?`` removed (the MemN2N reference)."""
  words = (w.lower().rstrip(".?") for w in text.split())
  return [w for w in words if w]


def read_task_file(path: str) -> list[Example]:
  """The questions of one bAbI file; raises UsageError naming the file and line."""
  examples: list[Example] = []
  story: list[list[str]] = []
  last_id = 0
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise UsageError(f"data.path: cannot read bAbI file {path}: {e}") from e
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    bad = lambda why: _malformed(path, number, line, why)
    head, _, text = line.partition(" ")
    if not head.isdigit():
      raise bad("the line does not start with a numeric ID and a space")
    line_id = int(head)
    if line_id == 1:
      story = []
    elif line_id != last_id + 1:
      raise bad(f"ID {line_id} does not follow {last_id} (IDs restart at 1 with a new story)")
    last_id = line_id
    fields = text.split("\t")
    if len(fields) == 1:
      if "?" in text:
        raise bad("a question without tab-separated answer and supporting IDs")
      words = tokenize(text)
      if not words:
        raise bad("an empty sentence")
      story.append(words)
      continue
    if len(fields) != 3:
      raise bad(f"{len(fields)} tab-separated fields instead of 3")
    question, answer, support = fields
    query, answer = tokenize(question), answer.strip().lower()
    if not query or not answer or " " in answer:
      raise bad("an empty question or an answer that is not one word")
    if not all(s.isdigit() for s in support.split()):
      raise bad("supporting fact IDs that are not numbers")
    examples.append(Example(list(story), query, answer))
  if not examples:
    raise UsageError(f"data.path: bAbI file {path} holds no questions")
  return examples


def _malformed(path: str, number: int, line: str, why: str) -> UsageError:
  return UsageError(f"data.path: {path}, line {number}: {why}; expected 'ID sentence' or "
                    f"'ID question<TAB>answer<TAB>supporting IDs', got {line!r}")


def task_files(folder: str, task: int) -> dict[str, str]:
  """``{"train": path, "test": path}`` of task ``task`` in a ``tasks_1-20_v1-2/<set>`` folder."""
  files = {}
  for split in ("train", "test"):
    found = sorted(glob.glob(os.path.join(glob.escape(folder), f"qa{task}_*_{split}.txt")))
    if len(found) != 1:
      what = "no file" if not found else f"{len(found)} files"
      raise UsageError(f"data.path: {what} matching qa{task}_*_{split}.txt in {folder}; "
                       "expected one per task and split (the bAbI v1.2 release)")
    files[split] = found[0]
  return files


def split_train_valid(examples: Sequence[Example]) -> tuple[list[Example], list[Example]]:
  """The last 10% of the training questions are the validation set (MemN2N reference)."""
  cut = math.floor((1 - VALID_FRACTION) * len(examples))
  return list(examples[:cut]), list(examples[cut:])


def vectorize(examples: Sequence[Example], word_ids: dict[str, int], memory_size: int,
              sentence_len: int) -> dict[str, np.ndarray]:
  """int32 ``stories`` [N, M, S] (most recent sentence in slot 0), ``queries`` [N, S] and
  ``answers`` [N]; memories beyond the ``memory_size`` most recent are dropped."""
  n = len(examples)
  stories = np.zeros((n, memory_size, sentence_len), np.int32)
  queries = np.zeros((n, sentence_len), np.int32)
  answers = np.zeros(n, np.int32)
  for i, ex in enumerate(examples):
    for slot, sentence in enumerate(reversed(ex.memories[-memory_size:])):
      stories[i, slot, :len(sentence)] = [word_ids[w] for w in sentence]
    queries[i, :len(ex.query)] = [word_ids[w] for w in ex.query]
    answers[i] = word_ids[ex.answer]
  return {"stories": stories, "queries": queries, "answers": answers}


DOWNLOAD = "download"
ARCHIVE_URL = "http://www.thespermwhale.com/jaseweston/babi/tasks_1-20_v1-2.tar.gz"


def download_babi(cache_dir: str | None = None) -> str:
  """Downloads and extracts the official bAbI v1.2 archive once; returns its folder.

  Uses tensorflow-datasets' download manager (checksummed, cached in ``cache_dir``,
  default ``~/.cache/gradnoise/babi``), which needs no TensorFlow.
  """
  import tensorflow_datasets as tfds
  cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "gradnoise", "babi")
  try:
    manager = tfds.download.DownloadManager(download_dir=cache_dir)
    extracted = os.fspath(manager.download_and_extract(ARCHIVE_URL))
  except Exception as e:  # noqa: BLE001 - any download failure is reported the same way
    raise UsageError(f"data.path=download: could not download {ARCHIVE_URL} ({e}); "
                     "download it yourself and set data.path to its tasks_1-20_v1-2 "
                     "folder") from None
  folder = os.path.join(extracted, "tasks_1-20_v1-2")
  return folder if os.path.isdir(folder) else extracted


def load_babi(path: str | None, babi_set: str, tasks: Sequence[int],
              memory_size: int = 50) -> BabiData:
  """Loads ``tasks`` of ``path/babi_set`` onto common shapes (see module doc).

  The vocabulary covers train and test of all loaded tasks; the memory size is
  ``memory_size`` or the longest story, if shorter (as the reference); the sentence length
  is the longest sentence or question. Every task must have the same number of questions
  per split (true of the official release), so that they stack.
  """
  if path is None:
    raise UsageError("data.path: not set; set it to the bAbI tasks_1-20_v1-2 folder, or "
                     "to 'download' to fetch the official archive")
  if path == DOWNLOAD:
    path = download_babi()
  path = os.path.expanduser(os.fspath(path))
  if babi_set not in BABI_SETS:
    raise UsageError(f"data.babi_set={babi_set!r} is unknown; accepted: {', '.join(BABI_SETS)}")
  if not tasks or any(t not in TASKS for t in tasks) or len(set(tasks)) != len(tasks):
    raise UsageError(f"data.tasks={list(tasks)!r} is invalid; accepted: distinct task ids "
                     "from 1 to 20")
  folder = os.path.join(path, babi_set)
  if not os.path.isdir(folder):
    raise UsageError(f"data.path: {folder} is not a folder; set data.path to the bAbI "
                     "tasks_1-20_v1-2 folder (holding en/ and en-10k/)")
  per_task = []
  for task in tasks:
    files = task_files(folder, task)
    train, valid = split_train_valid(read_task_file(files["train"]))
    per_task.append({"train": train, "valid": valid, "test": read_task_file(files["test"])})
  for split in SPLITS:
    counts = {t: len(d[split]) for t, d in zip(tasks, per_task)}
    if len(set(counts.values())) != 1:
      raise UsageError(f"data.tasks: the tasks differ in their number of {split} questions "
                       f"({counts}); tasks loaded together must have equal numbers")
  examples = [ex for d in per_task for split in SPLITS for ex in d[split]]
  words = {w for ex in examples for s in ex.memories + [ex.query] for w in s}
  vocab = [NIL] + sorted(words | {ex.answer for ex in examples})
  word_ids = {w: i for i, w in enumerate(vocab)}
  memory = min(memory_size, max(max(len(ex.memories) for ex in examples), 1))
  length = max(len(s) for ex in examples for s in ex.memories + [ex.query])
  splits = {}
  for split in SPLITS:
    arrays = [vectorize(d[split], word_ids, memory, length) for d in per_task]
    splits[split] = {k: np.stack([a[k] for a in arrays]) for k in arrays[0]}
  sizes = "/".join(str(len(per_task[0][s])) for s in SPLITS)
  description = (f"bAbI {babi_set} tasks {','.join(map(str, tasks))} from {folder}: "
                 f"{sizes} train/valid/test questions per task, vocabulary {len(vocab)}, "
                 f"memory {memory} x {length} words")
  return BabiData(splits, vocab, tuple(tasks), description)
