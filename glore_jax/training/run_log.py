"""What a training run shows and leaves behind: a tqdm bar, TensorBoard scalars and
`metrics.jsonl`, written by process 0 only."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping

import jax
from etils import epath

from glore_jax.training.checkpoint import is_local_path

log = logging.getLogger(__name__)


def copy_tree(src: str, dst: epath.Path) -> None:
  """Copies the files below local folder `src` into `dst` (any epath), replacing same names."""
  for dirpath, _, files in os.walk(src):
    for name in files:
      target = dst / os.path.relpath(os.path.join(dirpath, name), src)
      target.parent.mkdir(parents=True, exist_ok=True)
      epath.Path(dirpath, name).copy(target, overwrite=True)


class RunLog:
  """TensorBoard + metrics.jsonl + tqdm, on process 0 only.

  A local workdir: events go straight to `<workdir>/tensorboard`, metrics.jsonl is appended to.
  An object store (gs://), which cannot append: metrics.jsonl is rewritten whole at each update,
  and events go to a local temporary folder copied to `<workdir>/tensorboard` on close.

  Args:
    workdir: the run's folder.
    start: the step the run starts from (the bar's initial position).
    total_steps: the bar's total.
    loss: 'lm' or 'value' (the bar's label).
    progress: show the tqdm bar.
    hook: also called with every record, `hook(step, values)` (trackers such as W&B).
  """

  def __init__(
    self,
    workdir: epath.Path,
    *,
    start: int,
    total_steps: int,
    loss: str,
    progress: bool = True,
    hook: Callable[[int, Mapping[str, float]], None] | None = None,
  ):
    self.main = jax.process_index() == 0
    self.hook = hook  # also gets every record (trackers such as W&B)
    self.writer = self.bar = self.jsonl = None
    self.local = is_local_path(workdir)
    self.jsonl_path = workdir / "metrics.jsonl"
    self.tensorboard = workdir / "tensorboard"
    self.events = None  # the local folder of the events, when it is not the workdir's
    self.lines: list[str] = []
    if not self.main:
      return
    from tensorboardX import SummaryWriter

    if self.local:
      self.writer = SummaryWriter(os.fspath(self.tensorboard))
      self.jsonl = open(self.jsonl_path, "a")  # noqa: SIM115  (open for the run; closed in close)
    else:
      self.events = tempfile.mkdtemp(prefix="glore-tensorboard-")
      log.warning(
        "workdir %s is not local: TensorBoard events are written to %s and copied to "
        "%s when training ends",
        workdir,
        self.events,
        self.tensorboard,
      )
      self.writer = SummaryWriter(self.events)
      if self.jsonl_path.exists():  # resuming: keep the earlier records
        self.lines = self.jsonl_path.read_text().splitlines(keepends=True)
    if progress:
      from tqdm.auto import tqdm

      # a stage's run folder is <stage output>/train: name the bar after the stage
      name = workdir.parent.name if workdir.name == "train" else workdir.name
      self.bar = tqdm(
        total=total_steps, initial=start, desc=f"{name} [{loss}]", unit="step", dynamic_ncols=True
      )

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """Records `values` at `step`: TensorBoard (finite numbers), the hook, metrics.jsonl.

    Args:
      step: the training step.
      values: name -> value.
    """
    if not self.main:
      return
    for k, v in values.items():
      if isinstance(v, (int, float)) and math.isfinite(v):
        self.writer.add_scalar(k, v, step)
    if self.hook is not None:
      self.hook(step, values)
    line = json.dumps({"step": step, **values}) + "\n"
    if self.jsonl is not None:
      self.jsonl.write(line)
      self.jsonl.flush()
    else:  # object store: no append, the whole file each time
      self.lines.append(line)
      self.jsonl_path.write_text("".join(self.lines))

  def progress(self, steps: int, **postfix: str) -> None:
    """Advances the bar by `steps` and sets its postfix (e.g. loss=..., tok_s=...)."""
    if self.bar is not None:
      self.bar.update(steps)
      if postfix:
        self.bar.set_postfix(postfix, refresh=False)

  def close(self) -> None:
    """Closes the bar, the writers, and copies local events to an object-store workdir."""
    if self.bar is not None:
      self.bar.close()
    if self.writer is not None:
      self.writer.close()
    if self.jsonl is not None:
      self.jsonl.close()
    if self.events is not None:
      copy_tree(self.events, self.tensorboard)
      shutil.rmtree(self.events, ignore_errors=True)
      self.events = None
