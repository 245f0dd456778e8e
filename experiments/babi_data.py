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
import fnmatch
import math
import os
import secrets
import shutil
import tarfile
from typing import Sequence
import zlib

import numpy as np

from experiments.mnist_data import cache_dir, fetch, not_a_folder, reason
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
    raise UsageError(f"data.path: cannot read bAbI file {path} ({reason(e)})",
                     field="data.path") from e
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
    raise UsageError(f"data.path: bAbI file {path} holds no questions", field="data.path")
  return examples


def _malformed(path: str, number: int, line: str, why: str) -> UsageError:
  return UsageError(f"data.path: {path}, line {number}: {why}; expected 'ID sentence' or "
                    f"'ID question<TAB>answer<TAB>supporting IDs', got {line!r}",
                    field="data.path")


def task_files(folder: str, task: int) -> dict[str, str]:
  """``{"train": path, "test": path}`` of task ``task`` in a ``tasks_1-20_v1-2/<set>`` folder."""
  try:
    names = sorted(os.listdir(folder))
  except OSError as e:
    raise UsageError(f"data.path: cannot list {folder} ({reason(e)})",
                     field="data.path") from None
  files = {}
  for split in ("train", "test"):
    found = fnmatch.filter(names, f"qa{task}_*_{split}.txt")
    if len(found) != 1:
      what = "no file" if not found else f"{len(found)} files"
      raise UsageError(f"data.tasks: {what} matching qa{task}_*_{split}.txt in {folder}; "
                       "expected one per task and split (the bAbI v1.2 release)",
                       field="data.tasks")
    files[split] = os.path.join(folder, found[0])
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
ARCHIVE_FOLDER = "tasks_1-20_v1-2"
ARCHIVE = f"{ARCHIVE_FOLDER}.tar.gz"
ARCHIVE_URLS = (  # the official address, then the copy Keras' bAbI examples use
    f"http://www.thespermwhale.com/jaseweston/babi/{ARCHIVE}",
    f"https://s3.amazonaws.com/text-datasets/babi_{ARCHIVE}",
)
# As recorded by Hugging Face datasets (babi_qa) for the official address.
ARCHIVE_SIZE = 15719851
ARCHIVE_SHA256 = "0364ebde659f14d11bc21744516c5ec49d3d06cb692733f66680771244998898"


def download_babi() -> str:
  """The ``tasks_1-20_v1-2`` folder in the cache, downloaded and extracted once.

  The cache is ``$GRADNOISE_DATA_DIR/babi``, else ``~/.cache/gradnoise/babi``; an extracted
  folder there is used as is, an archive there is checked and extracted (no network).
  """
  folder = cache_dir("babi")
  target = os.path.join(folder, ARCHIVE_FOLDER)
  if os.path.isdir(target):
    return target
  advice = (f"without network, download {ARCHIVE} elsewhere and put it in {folder}, or "
            f"extract it and set data.path to its {ARCHIVE_FOLDER} folder")
  archive = fetch(ARCHIVE, ARCHIVE_URLS, folder, ARCHIVE_SIZE, ARCHIVE_SHA256, "data.path",
                  advice)
  tmp = os.path.join(folder, f".{ARCHIVE_FOLDER}.{secrets.token_hex(4)}.part")
  try:
    os.makedirs(tmp)  # a new folder of this call's own: the only one removed below
  except OSError as e:
    raise UsageError(f"data.path: cannot extract {archive} into {folder} ({reason(e)}); "
                     f"{advice}", field="data.path") from None
  try:
    _extract(archive, tmp)
    os.rename(os.path.join(tmp, ARCHIVE_FOLDER), target)
  except FileNotFoundError:
    raise UsageError(f"data.path: {archive} has no {ARCHIVE_FOLDER} folder; "
                     f"delete it to download it again, or {advice}",
                     field="data.path") from None
  except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
    if not os.path.isdir(target):  # else another process extracted it first
      raise UsageError(f"data.path: cannot extract {archive} into {folder} "
                       f"({reason(e)}); {advice}", field="data.path") from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return target


def _extract(archive: str, dest: str) -> None:
  """Extracts the regular files under ``tasks_1-20_v1-2/`` of ``archive`` into the folder
  ``dest``."""
  with tarfile.open(archive) as tar:
    for member in tar:
      parts = member.name.removeprefix("./").split("/")
      if not member.isfile() or parts[0] != ARCHIVE_FOLDER or ".." in parts:
        continue
      path = os.path.join(dest, *parts)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with tar.extractfile(member) as src, open(path, "wb") as out:
        shutil.copyfileobj(src, out)


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
                     "to 'download' to fetch the official archive", field="data.path")
  if babi_set not in BABI_SETS:
    raise UsageError(f"data.babi_set={babi_set!r} is unknown; accepted: {', '.join(BABI_SETS)}",
                     field="data.babi_set")
  if not tasks or any(t not in TASKS for t in tasks) or len(set(tasks)) != len(tasks):
    raise UsageError(f"data.tasks={list(tasks)!r} is invalid; accepted: distinct task ids "
                     "from 1 to 20", field="data.tasks")
  path = download_babi() if path == DOWNLOAD else os.path.abspath(
      os.path.expanduser(os.fspath(path)))
  folder = os.path.join(path, babi_set)
  why = not_a_folder(folder)
  if why:
    raise UsageError(f"data.path: {folder} is not a folder ({why}); set data.path to the "
                     "bAbI tasks_1-20_v1-2 folder (holding en/ and en-10k/)",
                     field="data.path")
  per_task = []
  for task in tasks:
    files = task_files(folder, task)
    train, valid = split_train_valid(read_task_file(files["train"]))
    per_task.append({"train": train, "valid": valid, "test": read_task_file(files["test"])})
  for split in SPLITS:
    counts = {t: len(d[split]) for t, d in zip(tasks, per_task)}
    if len(set(counts.values())) != 1:
      raise UsageError(f"data.tasks: the tasks differ in their number of {split} questions "
                       f"({counts}); tasks loaded together must have equal numbers",
                       field="data.tasks")
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
