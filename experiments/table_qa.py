"""Synthetic table question answering of the Neural Programmer paper (Neelakantan, Le and
Sutskever 2016, arXiv:1511.04834v3, sec. 3.1 and Appendix Tables 4-8), seeded, no files.

A triple is (question, table, answer). A table is M x C: numeric cells are reals drawn
uniformly from [-range, range] (100 in training, 200 at test) and rounded to
``decimals`` places; text cells (the text-entries setting, sec. 2.3.1) are words
``word:0`` .. ``word:9`` drawn uniformly. M is uniform in [30, 100] in training and 120 at
test; C is uniform in [1, max_columns] in training and max_columns at test. Columns are
named A, B, C, ... (the paper's Table 3).

Questions are token strings of the paper's template language, e.g.
``greater 50.32 C and lesser 20.21 E sum H``. Every template carries the program that
answers it, T = 4 steps of (operation, column), and the answer is computed by executing
that program on the table (:func:`execute`, the hard version of the paper's Table 1 and
sec. 2.3 updates). Shorter programs start with ``reset`` (sec. 2.3: reset may fill any
number of steps).

Grammar (Appendix Table 4; Table 5 for columns; PAPER_FACTS sec. 1.2): a final operation F
is ``sum X``, ``count`` or ``print X`` (no column letters in the single-column setting);
the templates are F; ``greater|lesser n X F``; the four ordered greater/lesser pairs
joined by and/or, ``g1 n1 X and|or g2 n2 Y F`` (g1 != g2); ``sum X diff count`` and
``count diff sum X``. That is N(C) = (2C+1)(1+2C+4C^2) + 2C templates: 23, 307 and 1231
for 1, 3 and 5 columns (the paper's Table 2). Word variability (Table 6) replaces each
operation word by one of its surface forms: 1368 single-column templates, as Table 2.

Choices where the paper is silent (UNCONFIRMED in PAPER_FACTS; ``decimals`` is a
parameter of :class:`TableSpec` and a config field, the others are fixed here):
- ``decimals`` (2): cell values and question numbers are reals with two decimals, as the
  numbers in the paper's examples (50.32, -80.97); 0 gives integers.
- Question numbers (pivots) are drawn like the cells of the table they ask about
  (uniform in [-range, range], same decimals). ``pivots`` (:data:`PIVOT_DRAWS`) says how
  the two numbers of a logic question comparing one column twice relate:
  ``independent`` (the :class:`TableSpec` default, the draw before the choice existed)
  draws them independently, so half of the ``greater a and lesser b`` questions ask for
  an empty range (answer 0, or no cell) and half of the ``or`` questions for the whole
  column; ``ordered`` (the configs' choice) draws the same two numbers and orders them:
  for ``and`` the greater-than pivot is the smaller (the range between them is asked
  for), for ``or`` the larger (the two tails). A question can then still select no row
  or every row when no cell falls in the range or the gap (3% of single-column training
  logic questions; independent: 50%) or, rarely at two decimals, when the numbers tie.
  Pairs on two different columns stay independent.
- Each triple has its own table.
- Text entries (1.4): the paper's text grammar (1125 templates for 2 columns) is not
  printed. Ours: the numeric grammar over the numeric columns, plus
  ``word:k X F``, ``word:k X and greater|lesser n Y F`` and, with two text columns or more,
  ``word:k X and word:k' X' F`` (X, X' text, Y numeric; sum and print take numeric
  columns only). ``sum``/``print`` of a text column is not asked.
- Test set: one question per template (Table 2's "No. of test question templates"), in
  template order; ``templates`` restricts training and test to a subset (tests, checks).
Sampling (Table 4 caption): a category (aggregation, comparison, logic, arithmetic, text)
uniformly, then a template uniformly within it; ``uniform_templates`` samples uniformly
over all templates (the paper's 5-column word-variability run).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Callable, Sequence

import numpy as np

# Operations of the paper's Table 1 (+ text match, sec. 2.3.1), in the model's order.
OPS = ("sum", "count", "difference", "greater", "lesser", "and", "or", "assign", "reset",
       "text_match")
NUMERIC_OPS = 9
OP = {name: i for i, name in enumerate(OPS)}
T = 4  # program steps (sec. 3.2.1)
PIVOT_DRAWS = ("independent", "ordered")  # TableSpec.pivots
MAX_COLUMNS = 10
TEXT_WORDS = tuple(f"word:{k}" for k in range(10))
LETTERS = tuple("ABCDEFGHIJ")
NUMBER = "<n>"  # a question number's place in a template
MAX_NUMBERS = 2
# Surface forms of the operation words (Table 6). ``diff`` is the template's word for
# difference; ``and``/``or`` have no variants.
SYNONYMS = {
    "sum": ("sum", "total", "total of", "sum of"),
    "count": ("count", "count of", "how many"),
    "greater": ("greater", "greater than", "bigger", "bigger than", "larger", "larger than"),
    "lesser": ("lesser", "lesser than", "smaller", "smaller than", "under"),
    "print": ("print", "display", "show"),
    "diff": ("difference", "difference between"),
}
PAD = "<pad>"
VOCAB = (PAD,) + tuple(sorted({w for forms in SYNONYMS.values() for f in forms
                               for w in f.split()} | {"diff", "and", "or"})) \
    + LETTERS + TEXT_WORDS
WORD_ID = {w: i for i, w in enumerate(VOCAB)}
CATEGORIES = ("aggregation", "comparison", "logic", "arithmetic", "text")

Step = tuple[int, int]  # (operation id, column index; 0 where the operation takes none)
Final = tuple[tuple[str, ...], Step, bool]  # a final operation: (words, step, scalar answer)


@dataclasses.dataclass(frozen=True)
class Template:
  """A question template and its program.

  Attributes:
    words: tokens, with NUMBER where a question number goes (at most MAX_NUMBERS).
    program: T steps of (operation id, column index).
    scalar: the answer is a number (else a lookup: cells of the table).
    category: one of CATEGORIES.
  """

  words: tuple[str, ...]
  program: tuple[Step, ...]
  scalar: bool
  category: str


@dataclasses.dataclass(frozen=True)
class TableSpec:
  """How tables and questions of one split are drawn (see the module docstring).

  Attributes:
    max_columns: C at test, the maximum in training (1..10).
    text_columns: how many of the columns hold text (0: a numeric-only setting); the
      first ``text_columns`` columns are text, always present.
    min_rows, max_rows: M is uniform in [min_rows, max_rows]; arrays have max_rows rows.
    value_range: numeric cells (and question numbers) are uniform in [-range, range].
    fixed_columns: every table has max_columns columns (test), else uniform in
      [text_columns + 1, max_columns].
    word_variability: operation words take their Table 6 surface forms.
    uniform_templates: sample templates uniformly instead of category first.
    decimals: decimal places of cells and question numbers (0: integers).
    templates: indices into :func:`templates` to draw from (empty: all).
    pivots: how the two numbers of a logic question on one column relate
      (:data:`PIVOT_DRAWS`, module docstring).

  Raises:
    ValueError: ``pivots`` not in :data:`PIVOT_DRAWS`.
  """

  max_columns: int = 1
  text_columns: int = 0
  min_rows: int = 30
  max_rows: int = 100
  value_range: float = 100.0
  fixed_columns: bool = False
  word_variability: bool = False
  uniform_templates: bool = False
  decimals: int = 2
  templates: tuple[int, ...] = ()
  pivots: str = "independent"

  def __post_init__(self):
    if self.pivots not in PIVOT_DRAWS:
      raise ValueError(f"pivots={self.pivots!r}; accepted: {', '.join(PIVOT_DRAWS)}")


def _words(word: str, variant: int | None) -> tuple[str, ...]:
  return tuple((word if variant is None else SYNONYMS[word][variant]).split())


def _variants(word: str, word_variability: bool) -> list[tuple[str, ...]]:
  if not word_variability or word not in SYNONYMS:
    return [(word,)]
  return [_words(word, v) for v in range(len(SYNONYMS[word]))]


def _col(letter_needed: bool, j: int) -> tuple[str, ...]:
  return (LETTERS[j],) if letter_needed else ()


@functools.lru_cache(maxsize=None)
def templates(num_columns: int, text_columns: int = 0, word_variability: bool = False,
              lettered: bool | None = None) -> tuple[Template, ...]:
  """Every template for tables of ``num_columns`` columns (module docstring grammar).

  Column letters appear when ``lettered`` (default: when num_columns > 1; a setting whose
  tables may have several columns keeps them for one-column tables). Raises ValueError
  for a column count outside 1..10 or text columns that leave no numeric column.
  """
  if not 1 <= num_columns <= MAX_COLUMNS or not 0 <= text_columns < num_columns:
    raise ValueError(f"num_columns={num_columns}, text_columns={text_columns}: accepted "
                     f"1 <= num_columns <= {MAX_COLUMNS}, 0 <= text_columns < num_columns")
  lettered = num_columns > 1 if lettered is None else lettered
  numeric = range(text_columns, num_columns)
  forms = functools.partial(_variants, word_variability=word_variability)
  finals: list[Final] = []
  for j in numeric:
    finals += [(w + _col(lettered, j), (OP["sum"], j), True) for w in forms("sum")]
  finals += [(w, (OP["count"], 0), True) for w in forms("count")]
  for j in numeric:
    finals += [(w + _col(lettered, j), (OP["assign"], j), False) for w in forms("print")]
  reset = (OP["reset"], 0)
  out = [Template(w, (reset,) * 3 + (step,), scalar, "aggregation")
         for w, step, scalar in finals]
  for comp, (w, step, scalar) in itertools.product(("greater", "lesser"), finals):
    for cw, j in itertools.product(forms(comp), numeric):
      out.append(Template(cw + (NUMBER,) + _col(lettered, j) + w,
                          (reset, reset, (OP[comp], j), step), scalar, "comparison"))
  for (c1, c2), conj in itertools.product((("greater", "lesser"), ("lesser", "greater")),
                                          ("and", "or")):
    for w1, w2, j, k in itertools.product(forms(c1), forms(c2), numeric, numeric):
      for w, step, scalar in finals:
        out.append(Template(w1 + (NUMBER,) + _col(lettered, j) + (conj,) + w2 + (NUMBER,)
                            + _col(lettered, k) + w,
                            ((OP[c1], j), (OP[c2], k), (OP[conj], 0), step), scalar, "logic"))
  for j, ws, wd, wc in itertools.product(numeric, forms("sum"), forms("diff"), forms("count")):
    out.append(Template(ws + _col(lettered, j) + wd + wc,
                        ((OP["sum"], j), reset, (OP["count"], 0), (OP["difference"], 0)),
                        True, "arithmetic"))
  for j, wc, wd, ws in itertools.product(numeric, forms("count"), forms("diff"), forms("sum")):
    out.append(Template(wc + wd + ws + _col(lettered, j),
                        ((OP["count"], 0), reset, (OP["sum"], j), (OP["difference"], 0)),
                        True, "arithmetic"))
  out += _text_templates(num_columns, text_columns, finals, forms)
  return tuple(out)


def _text_templates(num_columns: int, text_columns: int, finals: Sequence[Final],
                    forms: Callable[[str], list[tuple[str, ...]]]) -> list[Template]:
  """Text-match templates (our reconstruction, module docstring); ``finals`` are the final
  operations, ``forms(word)`` a word's surface forms."""
  out = []
  reset, match, numeric = (OP["reset"], 0), OP["text_match"], range(text_columns, num_columns)
  for word, x in itertools.product(TEXT_WORDS, range(text_columns)):
    for w, step, scalar in finals:
      out.append(Template((word, LETTERS[x]) + w, (reset, reset, (match, x), step), scalar,
                          "text"))
      for comp, y in itertools.product(("greater", "lesser"), numeric):
        for cw in forms(comp):
          out.append(Template((word, LETTERS[x], "and") + cw + (NUMBER, LETTERS[y]) + w,
                              ((match, x), (OP[comp], y), (OP["and"], 0), step), scalar,
                              "text"))
      for word2, x2 in itertools.product(TEXT_WORDS, range(x + 1, text_columns)):
        out.append(Template((word, LETTERS[x], "and", word2, LETTERS[x2]) + w,
                            ((match, x), (match, x2), (OP["and"], 0), step), scalar, "text"))
  return out


def template_count(num_columns: int) -> int:
  """N(C) = (2C+1)(1+2C+4C^2) + 2C, the numeric grammar's size (PAPER_FACTS sec. 1.2)."""
  c = num_columns
  return (2 * c + 1) * (1 + 2 * c + 4 * c * c) + 2 * c


@dataclasses.dataclass(frozen=True)
class Table:
  """One table. values [M, C] float (text columns 0); words [M, C] int (text word index
  0..9, -1 in numeric columns); text_columns leading columns hold text."""

  values: np.ndarray
  words: np.ndarray
  text_columns: int


def execute(program: Sequence[Step], table: Table, numbers: Sequence[float],
            text_words: Sequence[int] = ()) -> tuple[float, np.ndarray, np.ndarray]:
  """Runs a program with hard selection (paper Table 1 and sec. 2.3; PAPER_FACTS 2.5-2.6).

  greater/lesser compare with the question's ``numbers`` in order of appearance (the
  first comparison the first number); text match selects the rows whose word index equals
  the next of ``text_words``. Before step 1: row_select = 1^M and scalars 0, also for the
  t-2 and t-3 values (UNCONFIRMED boundary values).

  Returns (scalar_answer_T, lookup_answer_T [M, C] bool, row_select_T [M] bool). The
  program's answer is the scalar when its last operation is sum/count/difference, the
  lookup when it is assign. Raises StopIteration when the program compares more numbers
  or text words than given.
  """
  rows, cols = table.values.shape
  ones = np.ones(rows, bool)
  scalars = [0.0, 0.0, 0.0]  # s_{t-3}, s_{t-2}, s_{t-1}
  prev2, prev = ones, ones  # rs_{t-2}, rs_{t-1}
  lookup = np.zeros((rows, cols), bool)
  comparisons, matches = iter(numbers), iter(text_words)
  for op, j in program:
    name = OPS[op]
    scalar, select, lookup = 0.0, np.zeros(rows, bool), np.zeros((rows, cols), bool)
    if name == "sum":
      scalar = float(np.sum(table.values[prev, j], dtype=np.float64))
    elif name == "count":
      scalar = float(np.sum(prev))
    elif name == "difference":
      scalar = scalars[0] - scalars[2]
    elif name == "greater":
      select = table.values[:, j] > next(comparisons)
    elif name == "lesser":
      select = table.values[:, j] < next(comparisons)
    elif name == "and":
      select = prev & prev2
    elif name == "or":
      select = prev | prev2
    elif name == "assign":
      lookup[:, j] = prev
    elif name == "reset":
      select = ones
    else:  # text_match
      select = table.words[:, j] == next(matches)
    scalars = scalars[1:] + [scalar]
    prev2, prev = prev, select
  return scalars[-1], lookup, prev


def spec_templates(spec: TableSpec, num_columns: int) -> tuple[Template, ...]:
  """The templates a table of ``num_columns`` columns of setting ``spec`` is asked."""
  return templates(num_columns, spec.text_columns, spec.word_variability,
                   spec.max_columns > 1)


def max_words(spec: TableSpec) -> int:
  """The longest question of ``spec`` in words, numbers removed."""
  return max(sum(w != NUMBER for w in t.words)
             for t in spec_templates(spec, spec.max_columns))


def _draw_table(spec: TableSpec, num_columns: int, rng: np.random.Generator) -> Table:
  """A table of M ~ U[min_rows, max_rows] rows; the first text_columns columns text."""
  rows = int(rng.integers(spec.min_rows, spec.max_rows + 1))
  values = _draw_numbers(spec, (rows, num_columns), rng)
  words = np.full((rows, num_columns), -1, np.int64)
  if spec.text_columns:
    values[:, :spec.text_columns] = 0.0
    words[:, :spec.text_columns] = rng.integers(0, len(TEXT_WORDS), (rows, spec.text_columns))
  return Table(values, words, spec.text_columns)


def _draw_numbers(spec: TableSpec, shape: int | tuple[int, ...],
                  rng: np.random.Generator) -> np.ndarray:
  """Uniform in [-value_range, value_range], rounded to ``decimals`` places."""
  values = rng.uniform(-spec.value_range, spec.value_range, shape)
  return np.round(values, spec.decimals)


def order_pivots(template: Template, numbers: np.ndarray) -> np.ndarray:
  """``numbers`` (in question order) of a logic template comparing one column twice,
  sorted so that its question is non-trivial (``pivots="ordered"``, module docstring):
  for ``and`` the greater-than pivot below the lesser-than pivot, for ``or`` above it.
  Other templates' numbers are returned as they are."""
  (op1, col1), (op2, col2), (conj, _), _ = template.program
  comparisons = {OP["greater"], OP["lesser"]}
  if (template.category != "logic" or col1 != col2 or {op1, op2} != comparisons
      or len(numbers) != 2):
    return numbers
  low, high = np.sort(numbers)
  greater_low = conj == OP["and"]
  first_is_greater = op1 == OP["greater"]
  return np.array([low, high] if greater_low == first_is_greater else [high, low])


def _draw_template(spec: TableSpec, pool: Sequence[Template],
                   rng: np.random.Generator) -> Template:
  """Category uniformly, then a template within it (Table 4 caption), or uniform."""
  if spec.uniform_templates:
    return pool[int(rng.integers(len(pool)))]
  categories = sorted({t.category for t in pool}, key=CATEGORIES.index)
  category = categories[int(rng.integers(len(categories)))]
  within = [t for t in pool if t.category == category]
  return within[int(rng.integers(len(within)))]


def _pool(spec: TableSpec, num_columns: int) -> tuple[Template, ...]:
  pool = spec_templates(spec, num_columns)
  if spec.templates:
    allowed = {spec_templates(spec, spec.max_columns)[i] for i in spec.templates}
    pool = tuple(t for t in pool if t in allowed)
  return pool


def _encode(template: Template, table: Table, numbers: np.ndarray, length: int,
            rows: int, columns: int) -> dict[str, np.ndarray]:
  """One triple as the model's arrays (shapes in :func:`generate`)."""
  words, left = [], []
  for w in template.words:
    if w == NUMBER:
      left.append(len(words) - 1)
    else:
      words.append(WORD_ID[w])
  text_words = [TEXT_WORDS.index(w) for w in template.words if w in TEXT_WORDS]
  scalar, lookup, _ = execute(template.program, table, numbers, text_words)
  m, c = table.values.shape
  out = {
      "words": np.zeros(length, np.int32), "numbers": np.zeros(MAX_NUMBERS, np.float32),
      "number_left": np.zeros(MAX_NUMBERS, np.int32),
      "number_mask": np.zeros(MAX_NUMBERS, np.float32),
      "values": np.zeros((rows, columns), np.float32),
      "cells": np.zeros((rows, columns), np.int8),
      "num_rows": np.int32(m), "num_columns": np.int32(c),
      "is_scalar": np.float32(template.scalar), "scalar": np.float32(scalar),
      "lookup": np.zeros((rows, columns), np.int8),
  }
  out["words"][:len(words)] = words
  out["numbers"][:len(numbers)] = numbers
  out["number_left"][:len(left)] = left
  out["number_mask"][:len(numbers)] = 1.0
  out["values"][:m, :c] = table.values
  text = table.words >= 0
  out["cells"][:m, :c] = np.where(text, WORD_ID[TEXT_WORDS[0]] + table.words, 0)
  out["lookup"][:m, :c] = lookup
  return out


def generate(spec: TableSpec, num: int | None, rng: np.random.Generator,
             length: int | None = None) -> dict[str, np.ndarray]:
  """``num`` triples drawn as ``spec`` says, or (``num`` None) one per template of a
  max_columns table, in template order.

  Returns arrays with a leading example axis N: words [N, L] int32 (vocabulary ids of the
  question without its numbers, 0-padded; L = ``length`` or :func:`max_words`); numbers,
  number_left (index in ``words`` of the word left of each number), number_mask
  [N, 2]; values [N, max_rows, max_columns] float32 (0 outside the table and in text
  columns); cells (vocabulary id of each text cell, else 0) and lookup (the answer cells
  of a lookup question) [N, max_rows, max_columns] int8; num_rows, num_columns [N] int32;
  is_scalar (1.0 for a scalar answer) and scalar (the scalar answer) [N] float32;
  template [N] int32 (index into the max_columns template list).
  """
  length = length or max_words(spec)
  index = {t: i for i, t in enumerate(spec_templates(spec, spec.max_columns))}
  fixed = None if num is None else ()
  if num is None:
    fixed = _pool(spec, spec.max_columns)
    num = len(fixed)
  examples = []
  for i in range(num):
    columns = spec.max_columns if (fixed or spec.fixed_columns) else int(
        rng.integers(spec.text_columns + 1, spec.max_columns + 1))
    table = _draw_table(spec, columns, rng)
    template = fixed[i] if fixed else _draw_template(spec, _pool(spec, columns), rng)
    numbers = _draw_numbers(spec, template.words.count(NUMBER), rng)
    if spec.pivots == "ordered":
      numbers = order_pivots(template, numbers)
    example = _encode(template, table, numbers, length, spec.max_rows, spec.max_columns)
    example["template"] = np.int32(index.get(template, -1))
    examples.append(example)
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
