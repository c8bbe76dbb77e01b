"""The trainer's batch format, and collation from simple python records with length bucketing.

A batch is a dict of numpy arrays (right-padded; B rows, T columns):

=================  ==========  =================================================================
key                dtype       meaning
=================  ==========  =================================================================
tokens             int32       [B, T] token ids; padding is `pad_id`
attention_mask     int32       [B, T] 1 for real tokens, 0 for padding (and for empty filler rows)
target_mask        float32     [B, T] LM loss mask with the shift built in: target_mask[b, t] = 1
                               means the logits at position t are scored against tokens[b, t+1].
                               For an SFT example of n tokens whose first p are the prompt, the
                               targets are tokens p..n-1, so target_mask[p-1 : n-1] = 1 and the
                               last real position n-1 is always 0 (nothing follows it).
value_index        int32       [B, M] positions t whose hidden state the value head reads: the
                               token that ends each step (`EncodedSteps.step_ends`); -1 = padding
value_target       float32     [B, M] BCE target in [0, 1]: hard 0/1 labels or soft fractions
value_label        float32     [B, M] hard 0/1 label used for accuracy and AUROC
=================  ==========  =================================================================

An LM batch (SFT of the policy and the refiners) has the first three keys; a value batch (ORM,
SORM) has tokens, attention_mask and the three value_* keys. One batch is one *optimizer step*:
with gradient accumulation the trainer splits its B rows into `grad_accum` micro-batches, so a
whole step shares one length T and each bucket length compiles one program.

Sequence lengths are rounded up by `bucket_length` (powers of two by default, or multiples of a
fixed step), and `make_batches` groups examples of similar length so padding stays small.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

LM_KEYS = ("tokens", "attention_mask", "target_mask")
VALUE_KEYS = ("tokens", "attention_mask", "value_index", "value_target", "value_label")


@dataclasses.dataclass
class SFTExample:
  """One supervised sequence: `ids` = prompt + target tokens; the first `prompt_length` are the
  prompt (never trained on)."""

  ids: Sequence[int]
  prompt_length: int


@dataclasses.dataclass
class ValueExample:
  """One scored solution: `step_ends[i]` is the index in `ids` of the token that ends step i
  (`EncodedSteps.step_ends`), `labels[i]` its hard 0/1 label and `soft[i]` (optional) the fraction
  of rollouts that succeeded from that prefix."""

  ids: Sequence[int]
  step_ends: Sequence[int]
  labels: Sequence[float]
  soft: Sequence[float] | None = None

  @classmethod
  def from_encoded(
    cls, encoded: Any, labels: Sequence[float], soft: Sequence[float] | None = None
  ) -> ValueExample:
    """From an `EncodedSteps` whose trailing steps may have been dropped by truncation: labels
    (given for every step of the untruncated solution) are cut to the steps that were kept."""
    kept = len(encoded.step_ends)
    if len(labels) < kept:
      raise ValueError(f"{len(labels)} labels for {kept} encoded steps")
    return cls(
      list(encoded.ids),
      list(encoded.step_ends),
      list(labels[:kept]),
      None if soft is None else list(soft[:kept]),
    )


def _get(record: Any, name: str, default: Any = None) -> Any:
  if isinstance(record, Mapping):
    return record.get(name, default)
  return getattr(record, name, default)


def bucket_length(
  n: int, *, multiple: int | None = None, minimum: int = 16, maximum: int | None = None
) -> int:
  """The padded length for a batch whose longest row has n tokens: the next power of two
  (default) or the next multiple of `multiple`, at least `minimum`, at most `maximum`.

  Args:
    n: the longest row's token count.
    multiple: round up to a multiple of this instead of a power of two.
    minimum: the shortest length returned.
    maximum: the longest length returned (None: no cap).
  """
  n = max(int(n), 1)
  if multiple:
    length = max(minimum, multiple * math.ceil(n / multiple))
  else:
    length = max(minimum, 1 << (n - 1).bit_length())
  if maximum is not None:
    if n > maximum:
      raise ValueError(f"a row of {n} tokens is longer than maximum={maximum}; truncate it first")
    length = min(length, maximum)
  return length


def _check_pad_id(pad_id: Any) -> None:
  """A tokenizer without a pad token gives pad_id=None: say what to pass instead."""
  if isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer)):
    raise ValueError(
      f"pad_id={pad_id!r}: expected a token id; a tokenizer without a pad token "
      "pads with EOS (glore_jax.data.tokenizer.padding_id)"
    )


def collate_lm(
  records: Sequence[Any],
  *,
  length: int | None = None,
  batch_size: int | None = None,
  pad_id: int = 0,
  bucket_multiple: int | None = None,
) -> dict[str, np.ndarray]:
  """Records with `ids` and `prompt_length` (SFTExample, EncodedSteps, or dicts) -> an LM batch.

  `length` defaults to the bucket of the longest row; `batch_size` > len(records) adds empty
  filler rows (all masks 0) so a last partial batch keeps the compiled shape.

  Args:
    records: the rows; `prompt_length` tokens of each are the prompt (not trained on).
    length: the padded length (default: `bucket_length` of the longest row).
    batch_size: the row count (default: len(records)).
    pad_id: the padding token id.
    bucket_multiple: see `bucket_length`.

  Returns:
    `tokens` [B, T] int32, `attention_mask` [B, T] int32, `target_mask` [B, T] float32 (1 where
    the position predicts a target token).
  """
  batch_size = batch_size or len(records)
  if len(records) > batch_size:
    raise ValueError(f"{len(records)} records for batch_size={batch_size}")
  _check_pad_id(pad_id)
  lengths = [len(_get(r, "ids")) for r in records]
  length = length or bucket_length(max(lengths, default=1), multiple=bucket_multiple)
  tokens = np.full((batch_size, length), pad_id, np.int32)
  attention = np.zeros((batch_size, length), np.int32)
  target = np.zeros((batch_size, length), np.float32)
  for row, record in enumerate(records):
    ids, p = list(_get(record, "ids")), int(_get(record, "prompt_length", 0))
    n = len(ids)
    if n > length:
      raise ValueError(f"row {row}: {n} tokens do not fit length {length}")
    if not 0 <= p <= n:
      raise ValueError(f"row {row}: prompt_length={p} outside 0..{n}")
    tokens[row, :n] = ids
    attention[row, :n] = 1
    # position t predicts token t+1; targets are tokens max(p,1)..n-1 (token 0 has no predictor)
    target[row, max(p, 1) - 1 : n - 1] = 1.0
  return {"tokens": tokens, "attention_mask": attention, "target_mask": target}


def collate_value(
  records: Sequence[Any],
  *,
  targets: Literal["hard", "soft"] = "hard",
  length: int | None = None,
  batch_size: int | None = None,
  num_steps: int | None = None,
  pad_id: int = 0,
  bucket_multiple: int | None = None,
) -> dict[str, np.ndarray]:
  """Records with `ids`, `step_ends`, `labels` (and `soft` for soft targets) -> a value batch.

  Args:
    records: the rows (ValueExample, or objects / dicts with those fields).
    targets: `value_target` holds the hard 0/1 labels or the soft ones.
    length: the padded length (default: `bucket_length` of the longest row).
    batch_size: the row count (default: len(records)); extra rows are empty fillers.
    num_steps: labelled steps per row, M (default: the next power of two of the most steps in a
      row, at least 4).
    pad_id: the padding token id.
    bucket_multiple: see `bucket_length`.

  Returns:
    `tokens`, `attention_mask` [B, T] int32; `value_index` [B, M] int32 (the token ending each
    step, -1 for none), `value_target` and `value_label` [B, M] float32.
  """
  if targets not in ("hard", "soft"):
    raise ValueError(f"targets={targets!r}; choose 'hard' or 'soft'")
  batch_size = batch_size or len(records)
  if len(records) > batch_size:
    raise ValueError(f"{len(records)} records for batch_size={batch_size}")
  lengths = [len(_get(r, "ids")) for r in records]
  length = length or bucket_length(max(lengths, default=1), multiple=bucket_multiple)
  _check_pad_id(pad_id)
  most = max((len(_get(r, "step_ends")) for r in records), default=1)
  num_steps = num_steps or bucket_length(most, minimum=4)
  tokens = np.full((batch_size, length), pad_id, np.int32)
  attention = np.zeros((batch_size, length), np.int32)
  index = np.full((batch_size, num_steps), -1, np.int32)
  target = np.zeros((batch_size, num_steps), np.float32)
  label = np.zeros((batch_size, num_steps), np.float32)
  for row, record in enumerate(records):
    ids, ends = list(_get(record, "ids")), list(_get(record, "step_ends"))
    hard = [float(x) for x in _get(record, "labels")]
    n, m = len(ids), len(ends)
    if n > length or m > num_steps:
      raise ValueError(f"row {row}: {n} tokens / {m} steps do not fit [{length}, {num_steps}]")
    if len(hard) != m:
      raise ValueError(f"row {row}: {len(hard)} labels for {m} step ends")
    if any(not 0 <= e < n for e in ends) or any(b <= a for a, b in itertools.pairwise(ends)):
      raise ValueError(f"row {row}: step_ends {ends} must increase within 0..{n - 1}")
    if targets == "soft":
      soft = _get(record, "soft")
      if soft is None:
        raise ValueError(f"row {row}: value_targets='soft' but the record has no soft labels")
      soft = [float(x) for x in soft]
      if len(soft) != m or any(not 0.0 <= s <= 1.0 for s in soft):
        raise ValueError(f"row {row}: soft labels {soft} must be {m} values in [0, 1]")
    tokens[row, :n] = ids
    attention[row, :n] = 1
    index[row, :m] = ends
    label[row, :m] = [1.0 if h > 0.5 else 0.0 for h in hard]
    target[row, :m] = soft if targets == "soft" else label[row, :m]
  return {
    "tokens": tokens,
    "attention_mask": attention,
    "value_index": index,
    "value_target": target,
    "value_label": label,
  }


def _truncate(record: Any, kind: str, max_length: int) -> Any | None:
  """Cuts a record to `max_length` tokens; None when nothing trainable is left."""
  ids = list(_get(record, "ids"))
  if len(ids) <= max_length:
    return record
  if kind == "lm":
    p = int(_get(record, "prompt_length", 0))
    return None if p >= max_length else SFTExample(ids[:max_length], p)
  ends = list(_get(record, "step_ends"))
  keep = sum(1 for e in ends if e < max_length)
  if keep == 0:
    return None
  soft = _get(record, "soft")
  return ValueExample(
    ids[:max_length],
    ends[:keep],
    list(_get(record, "labels"))[:keep],
    None if soft is None else list(soft)[:keep],
  )


def make_batches(
  records: Iterable[Any],
  *,
  batch_size: int,
  kind: Literal["lm", "value"],
  value_targets: Literal["hard", "soft"] = "hard",
  pad_id: int = 0,
  max_length: int | None = None,
  bucket_multiple: int | None = None,
  shuffle: bool = True,
  seed: int = 0,
  drop_last: bool = False,
  group_window: int = 64,
) -> list[dict[str, np.ndarray]]:
  """Records -> a list of fixed-row-count batches with few distinct lengths.

  Examples are shuffled (seeded), then within windows of `group_window` batches sorted by length
  and cut into batches, so each batch holds similar lengths; batch order is shuffled again. Rows
  longer than `max_length` are truncated (LM: target tail cut; value: trailing steps dropped) and
  counted in a warning; rows left with nothing to train on are dropped and counted.

  Args:
    records: SFTExample (kind 'lm') or ValueExample (kind 'value') records, or objects / dicts
      with their fields.
    batch_size: the rows of one optimizer step (micro-batch size x grad_accum).
    kind: 'lm' (`collate_lm`) or 'value' (`collate_value`).
    value_targets: 'hard' or 'soft' (kind 'value').
    pad_id: the padding token id.
    max_length: truncate longer rows (None: no limit).
    bucket_multiple: see `bucket_length`.
    shuffle: shuffle examples and batches (seeded by `seed`); False keeps the order.
    seed: the shuffle's seed.
    drop_last: drop a last batch with fewer than `batch_size` records (else filler rows pad it).
    group_window: batches per length-sorting window.
  """
  if kind not in ("lm", "value"):
    raise ValueError(f"kind={kind!r}; choose 'lm' or 'value'")
  records = list(records)
  truncated = dropped = 0
  if max_length is not None:
    kept = []
    for r in records:
      t = _truncate(r, kind, max_length)
      truncated += t is not r and t is not None
      dropped += t is None
      if t is not None:
        kept.append(t)
    records = kept
  if truncated or dropped:
    log.warning(
      "make_batches: %d of %d examples truncated to max_length=%d, %d dropped (nothing "
      "trainable left)",
      truncated,
      len(records) + dropped,
      max_length,
      dropped,
    )
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(records)) if shuffle else np.arange(len(records))
  window = batch_size * max(group_window, 1)
  groups: list[list[int]] = []
  for start in range(0, len(order), window):
    chunk = sorted(order[start : start + window], key=lambda i: len(_get(records[i], "ids")))
    groups.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
  if drop_last:
    groups = [g for g in groups if len(g) == batch_size]
  if shuffle:
    groups = [groups[i] for i in rng.permutation(len(groups))]
  collate = collate_lm if kind == "lm" else collate_value
  extra = {} if kind == "lm" else {"targets": value_targets}
  return [
    collate(
      [records[i] for i in g],
      batch_size=batch_size,
      pad_id=pad_id,
      bucket_multiple=bucket_multiple,
      **extra,
    )
    for g in groups
  ]


def padding_fraction(batches: Iterable[Mapping[str, np.ndarray]]) -> float:
  """Share of token slots that are padding, over a set of batches.

  Args:
    batches: batches with an `attention_mask`.
  """
  real = total = 0
  for b in batches:
    real += int(b["attention_mask"].sum())
    total += b["attention_mask"].size
  return 1.0 - real / max(total, 1)
