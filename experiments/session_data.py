"""Session data for GRU4Rec (Hidasi et al. 2015, arXiv:1511.06939, sec. 3.1.1 and 4).

Reads click logs in two formats, splits them as the paper and lays training events out as
session-parallel mini-batches.

* RSC15 (RecSys Challenge 2015, ``yoochoose-clicks.dat``): no header, comma-separated
  ``SessionId,Timestamp,ItemId,Category`` with ISO times (``2014-04-07T10:51:09.277Z``).
* Diginetica (CIKM Cup 2016, ``train-item-views.csv``): ``;``-separated with the header
  ``session_id;user_id;item_id;timeframe;eventdate``; ``eventdate`` is a day
  (``2016-05-09``) and ``timeframe`` orders the clicks inside a session.

Preprocessing (paper sec. 4.1 and the official ``preprocess.py``): sessions of length 1
removed; items with fewer than ``min_item_support`` clicks removed and sessions left
shorter than 2 removed again; whole sessions go to test when their last click is in the
last ``test_days`` days of the data (RSC15: 1 day of 86,400 s before the last click;
Diginetica: the last 7 dates, the day resolution of ``eventdate``), the rest to train;
test clicks on items absent from train are removed and test sessions left shorter than 2
dropped. Items are indexed 0..n-1 in the order of their raw ids. Sessions are ordered by
their first click (then by id), clicks inside a session by time (then file order).
"""

from __future__ import annotations

import array
import dataclasses
import datetime
import itertools
import os

import numpy as np

from gradnoise.errors import UsageError

FORMATS = ("auto", "rsc15", "diginetica")
DIGINETICA_HEADER = ("session_id", "user_id", "item_id", "timeframe", "eventdate")
DAY_SECONDS = 86400.0


@dataclasses.dataclass(frozen=True)
class Events:
  """Clicks in file order.

  Attributes:
    session: raw session id [N] (int64).
    item: raw item id [N] (int64).
    time: seconds since the Unix epoch [N] (float64), used for the train/test split
      (Diginetica: the start of ``eventdate``).
    order: sort key of the clicks inside a session [N] (float64; RSC15: the time,
      Diginetica: ``timeframe``).
  """

  session: np.ndarray
  item: np.ndarray
  time: np.ndarray
  order: np.ndarray


@dataclasses.dataclass(frozen=True)
class Sessions:
  """Sessions as consecutive runs of events.

  Attributes:
    items: item index of each event [N] (int32), session after session.
    offsets: start of each session in ``items`` [S + 1] (int64); session s is
      ``items[offsets[s]:offsets[s + 1]]``.
  """

  items: np.ndarray
  offsets: np.ndarray

  @property
  def num_sessions(self) -> int:
    return len(self.offsets) - 1

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)


@dataclasses.dataclass(frozen=True)
class Split:
  """The paper's train/test split.

  Attributes:
    train, test: sessions; items are indices into ``item_ids``.
    item_ids: raw id of each training item [num_items] (sorted).
    description: one line (source and sizes) for the run plan.
  """

  train: Sessions
  test: Sessions
  item_ids: np.ndarray
  description: str

  @property
  def num_items(self) -> int:
    return len(self.item_ids)


def _error(path: str, line: int, message: str) -> UsageError:
  return UsageError(f"data file {path}, line {line}: {message}", field="data.path")


def _detect(path: str, first: str) -> str:
  """The format of a file whose first line is ``first``."""
  if tuple(first.strip().split(";")) == DIGINETICA_HEADER:
    return "diginetica"
  if first.count(",") == 3:
    return "rsc15"
  raise _error(path, 1, f"{first.strip()[:80]!r} is neither the Diginetica header "
               f"{';'.join(DIGINETICA_HEADER)!r} nor an RSC15 click "
               "'SessionId,Timestamp,ItemId,Category'.")


def _rsc15(fields_: list[str]) -> tuple[int, int, float, float]:
  stamp = datetime.datetime.fromisoformat(fields_[1].replace("Z", "+00:00"))
  if stamp.tzinfo is None:
    stamp = stamp.replace(tzinfo=datetime.timezone.utc)
  seconds = stamp.timestamp()
  return int(fields_[0]), int(fields_[2]), seconds, seconds


def _diginetica(fields_: list[str]) -> tuple[int, int, float, float]:
  day = datetime.date.fromisoformat(fields_[4])
  seconds = (day - datetime.date(1970, 1, 1)).days * DAY_SECONDS
  return int(fields_[0]), int(fields_[2]), seconds, float(fields_[3])


def read_events(path: str, fmt: str = "auto") -> Events:
  """All clicks of ``path`` (``fmt``: ``auto``, ``rsc15`` or ``diginetica``).

  Raises:
    UsageError: naming the file (and the line) when it is missing, empty or malformed.
  """
  if not path or not os.path.isfile(path):
    raise UsageError(f"config field data.path={path!r}: no such file; accepted: an RSC15 "
                     "yoochoose-clicks.dat or a Diginetica train-item-views.csv.",
                     field="data.path")
  columns = (array.array("q"), array.array("q"), array.array("d"), array.array("d"))
  with open(path, encoding="utf-8", errors="replace") as f:
    first = f.readline()
    if not first.strip():
      raise _error(path, 1, "the file is empty.")
    kind = _detect(path, first) if fmt == "auto" else fmt
    parse, sep, width = (_rsc15, ",", 4) if kind == "rsc15" else (_diginetica, ";", 5)
    if kind == "diginetica":
      if tuple(first.strip().split(";")) != DIGINETICA_HEADER:
        raise _error(path, 1, f"expected the header {';'.join(DIGINETICA_HEADER)!r}.")
      lines = enumerate(f, 2)
    else:
      lines = enumerate(itertools.chain([first], f), 1)
    for number, line in lines:
      if not line.strip():
        continue
      fields_ = line.rstrip("\r\n").split(sep)
      if len(fields_) != width:
        raise _error(path, number, f"{len(fields_)} fields, expected {width} ({kind}).")
      try:
        values = parse(fields_)
      except ValueError as e:
        raise _error(path, number, f"cannot read {line.strip()[:80]!r} as {kind} ({e}).") from None
      for column, value in zip(columns, values):
        column.append(value)
  if not columns[0]:
    raise _error(path, 2, "no clicks after the header.")
  return Events(*(np.frombuffer(c, c.typecode).copy() for c in columns))


def _sorted(events: Events) -> Events:
  """Events grouped by session (sessions by first click time, then id), time order inside."""
  _, inverse = np.unique(events.session, return_inverse=True)
  start = np.full(inverse.max() + 1, np.inf)
  np.minimum.at(start, inverse, events.time)
  perm = np.lexsort((np.arange(len(inverse)), events.order, events.session, start[inverse]))
  return Events(*(getattr(events, f.name)[perm] for f in dataclasses.fields(Events)))


def _keep(events: Events, mask: np.ndarray) -> Events:
  return Events(*(getattr(events, f.name)[mask] for f in dataclasses.fields(Events)))


def _session_sizes(events: Events) -> np.ndarray:
  """The length of each event's session [N]."""
  _, inverse, counts = np.unique(events.session, return_inverse=True, return_counts=True)
  return counts[inverse]


def _drop_short(events: Events) -> Events:
  return _keep(events, _session_sizes(events) >= 2)


def _sessions(events: Events, item_ids: np.ndarray) -> Sessions:
  """Sorted events as Sessions with items indexed into ``item_ids``."""
  starts = np.flatnonzero(np.r_[True, events.session[1:] != events.session[:-1]])
  items = np.searchsorted(item_ids, events.item).astype(np.int32)
  return Sessions(items, np.r_[starts, len(items)].astype(np.int64))


def split(events: Events, test_days: float, min_item_support: int,
          source: str = "") -> Split:
  """The paper's preprocessing and train/test split (module docstring)."""
  events = _drop_short(_sorted(events))
  _, inverse, counts = np.unique(events.item, return_inverse=True, return_counts=True)
  events = _drop_short(_keep(events, counts[inverse] >= min_item_support))
  if not len(events.item):
    raise UsageError(f"data file {source}: no session of 2 or more clicks on items with "
                     f">= {min_item_support} clicks (data.min_item_support).",
                     field="data.path")
  _, inverse = np.unique(events.session, return_inverse=True)
  end = np.full(inverse.max() + 1, -np.inf)
  np.maximum.at(end, inverse, events.time)
  test_mask = end[inverse] > events.time.max() - test_days * DAY_SECONDS
  train, test = _keep(events, ~test_mask), _keep(events, test_mask)
  item_ids = np.unique(train.item)
  test = _drop_short(_keep(test, np.isin(test.item, item_ids)))
  train_s, test_s = _sessions(train, item_ids), _sessions(test, item_ids)
  if not train_s.num_sessions or not test_s.num_sessions:
    raise UsageError(f"data file {source}: the split by the last {test_days:g} days "
                     f"(data.test_days) leaves {train_s.num_sessions} training and "
                     f"{test_s.num_sessions} test sessions; both must be non-empty.",
                     field="data.test_days")
  description = (f"{source}: train {train_s.num_sessions} sessions, {len(train_s.items)} "
                 f"clicks; test {test_s.num_sessions} sessions, {len(test_s.items)} clicks "
                 f"(last {test_days:g} days); {len(item_ids)} items")
  return Split(train_s, test_s, item_ids, description)


def session_parallel(offsets: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Session-parallel mini-batches (paper sec. 3.1.1, Fig. 2).

  Slot b starts with session b; each step feeds every slot's next click (its target is
  the click after it). When a slot's session has no target left, the slot takes the next
  unused session and its hidden state is reset before that step. Stops, as the official
  code, at the first slot that finds no unused session (the clicks still in other slots
  are left out of the epoch).

  Args:
    offsets: session starts [S + 1] (``Sessions.offsets``), every session of length >= 2.
    batch_size: slots B (<= S).

  Returns:
    inputs: event index of each slot's input click [steps, B] (the target is index + 1).
    reset: whether the slot's hidden state is zeroed before the step [steps, B] (bool).
  """
  num_sessions = len(offsets) - 1
  pos, end = offsets[:batch_size].copy(), offsets[1:batch_size + 1].copy()
  reset = np.ones(batch_size, bool)
  next_session = batch_size
  inputs, resets = [], []
  while True:
    steps = int((end - pos).min()) - 1  # every slot has a target for this many steps
    inputs.append(pos[None] + np.arange(steps)[:, None])
    chunk_reset = np.zeros((steps, batch_size), bool)
    chunk_reset[0] = reset
    resets.append(chunk_reset)
    pos = pos + steps
    reset = end - pos <= 1
    for slot in np.flatnonzero(reset):
      if next_session >= num_sessions:
        return np.concatenate(inputs), np.concatenate(resets)
      pos[slot], end[slot] = offsets[next_session], offsets[next_session + 1]
      next_session += 1


def prefixes(sessions: Sessions) -> tuple[np.ndarray, np.ndarray]:
  """Evaluation points (paper sec. 4): every click but the first of each session.

  Returns:
    prefix: the session's clicks before the target [M, L] (int32), left-padded with -1;
      L = longest session - 1.
    target: the item to predict [M] (int32).
  """
  lengths = sessions.lengths
  width = int(lengths.max()) - 1
  prefix = np.full((int(np.sum(lengths - 1)), width), -1, np.int32)
  target = np.empty(len(prefix), np.int32)
  row = 0
  for start, stop in zip(sessions.offsets[:-1], sessions.offsets[1:]):
    for t in range(start + 1, stop):
      prefix[row, width - (t - start):] = sessions.items[start:t]
      target[row] = sessions.items[t]
      row += 1
  return prefix, target
