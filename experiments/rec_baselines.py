"""Next-click ranking metrics and the baselines of GRU4Rec (Hidasi et al. 2015, sec. 4.1,
Table 1): POP, S-POP and Item-KNN, on the evaluation points of
:func:`experiments.session_data.prefixes`.

Ranks (paper sec. 4; ties are not in the paper): for the target's score s_t over all
training items, g = #items scoring > s_t and e = #items scoring == s_t (target included):
``conservative`` rank g + e (the target after every tied item; the later official code's
default), ``optimistic`` g + 1, ``median`` g + (e + 1) / 2. Recall@20 = 1 if rank <= 20;
MRR@20 = 1 / rank if rank <= 20, else 0; both averaged over evaluation points.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import sparse

from experiments.session_data import Sessions

TIES = ("conservative", "optimistic", "median")
CUTOFF = 20
KNN_LAMBDA = 20.0  # the regulariser for rare items of the official baselines.py
KNN_ALPHA = 0.5  # sim = cooc / (supp_i^alpha supp_j^(1-alpha) + lambda): cosine at 0.5


def target_ranks(scores, targets, ties: str):
  """Rank (1 = best) of each target among all items [M], ties as ``ties``.

  Works on numpy (float64 kept: baselines) and jax arrays (inside the compiled program).

  Args:
    scores: item scores [M, num_items] (larger = better).
    targets: item index of each row's target [M] (integer).
    ties: one of :data:`TIES` (module docstring).
  """
  xp = scores.__array_namespace__()
  target = xp.take_along_axis(scores, xp.astype(targets[:, None], xp.int32), axis=1)
  greater = xp.astype(xp.sum(scores > target, axis=1), scores.dtype)
  equal = xp.astype(xp.sum(scores == target, axis=1), scores.dtype)
  if ties == "conservative":
    return greater + equal
  if ties == "optimistic":
    return greater + 1
  return greater + (equal + 1) / 2


def recall_mrr(ranks, cutoff: int = CUTOFF) -> dict:
  """Per evaluation point [M]: ``recall20`` (1 if rank <= cutoff) and ``mrr20`` (1 / rank,
  0 beyond the cutoff), in the ranks' array type."""
  xp = ranks.__array_namespace__()
  hit = ranks <= cutoff
  return {"recall20": xp.astype(hit, ranks.dtype), "mrr20": xp.where(hit, 1 / ranks, 0.0)}


Scorer = Callable[[np.ndarray], np.ndarray]


def popularity(train: Sessions, num_items: int) -> np.ndarray:
  """Training clicks per item [num_items] (float64)."""
  return np.bincount(train.items, minlength=num_items).astype(np.float64)


def pop(train: Sessions, num_items: int) -> Scorer:
  """POP: every evaluation point scores the items by training clicks."""
  counts = popularity(train, num_items)
  return lambda prefix: np.broadcast_to(counts, (len(prefix), num_items))


def spop(train: Sessions, num_items: int) -> Scorer:
  """S-POP: clicks on each item in the session so far, ties broken by training clicks
  (scaled below 1; float64)."""
  tie_break = popularity(train, num_items)
  tie_break /= tie_break.max() + 1.0

  def scores(prefix: np.ndarray) -> np.ndarray:
    rows = np.repeat(np.arange(len(prefix)), prefix.shape[1])
    items = prefix.ravel()
    counts = np.zeros((len(prefix), num_items))
    np.add.at(counts, (rows[items >= 0], items[items >= 0]), 1.0)
    return counts + tie_break
  return scores


def knn_similarity(train: Sessions, num_items: int, lam: float = KNN_LAMBDA,
                   alpha: float = KNN_ALPHA) -> sparse.csr_matrix:
  """Item-KNN similarity [num_items, num_items] as the official ``baselines.py``:
  cooc_ij / ((supp_i + lam)^alpha (supp_j + lam)^(1 - alpha)), cooc_ij = sum over
  sessions of (clicks on i) x (clicks on j), supp_i = clicks on i, zero diagonal.
  alpha 0.5, lam 0: the cosine of the items' session-click vectors."""
  session = np.repeat(np.arange(train.num_sessions), train.lengths)
  clicks = sparse.csr_matrix((np.ones(len(session)), (session, train.items)),
                             shape=(train.num_sessions, num_items))
  cooc = (clicks.T @ clicks).tocoo()
  support = popularity(train, num_items) + lam
  data = cooc.data / (support[cooc.row] ** alpha * support[cooc.col] ** (1 - alpha))
  data[cooc.row == cooc.col] = 0.0
  similarity = sparse.csr_matrix((data, (cooc.row, cooc.col)), shape=cooc.shape)
  similarity.eliminate_zeros()
  return similarity


def knn(train: Sessions, num_items: int) -> Scorer:
  """Item-KNN: each item's similarity to the session's last click."""
  similarity = knn_similarity(train, num_items)
  return lambda prefix: similarity[prefix[:, -1]].toarray()


BASELINES: dict[str, Callable[[Sessions, int], Scorer]] = {
    "POP": pop, "S-POP": spop, "Item-KNN": knn}


def evaluate(name: str, train: Sessions, num_items: int, prefix: np.ndarray,
             target: np.ndarray, ties: str = "conservative",
             chunk: int = 2048) -> dict[str, float]:
  """Recall@20 and MRR@20 of baseline ``name`` (a key of :data:`BASELINES`) over the
  evaluation points ``prefix`` [M, L] (left-padded with -1) and ``target`` [M], scored
  ``chunk`` points at a time ([chunk, num_items] float64)."""
  scorer = BASELINES[name](train, num_items)
  totals = {"recall20": 0.0, "mrr20": 0.0}
  for start in range(0, len(prefix), chunk):
    rows = slice(start, start + chunk)
    ranks = target_ranks(np.asarray(scorer(prefix[rows]), np.float64), target[rows], ties)
    for metric, values in recall_mrr(ranks).items():
      totals[metric] += float(np.sum(values))
  return {metric: total / len(prefix) for metric, total in totals.items()}
