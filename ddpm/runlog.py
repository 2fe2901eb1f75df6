"""The logs of a training run: log.csv (loss per logged step) and loss_by_t.csv (loss per timestep bucket).

Rows are appended as training goes. On resume, rows logged after the checkpoint being resumed from
are dropped, and the trimmed file replaces the old one atomically (a kill during the rewrite leaves the
old file, never an empty one). A row cut short by a kill is dropped on the next start.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import torch

from ddpm._files import write_text_atomic

__all__ = ["RunLog", "NUM_T_BUCKETS", "LOG_NAME", "LOSS_BY_T_NAME", "LOG_COLUMNS", "bucket_columns"]

NUM_T_BUCKETS = 10
LOG_NAME, LOSS_BY_T_NAME = "log.csv", "loss_by_t.csv"
LOG_COLUMNS = ["step", "loss", "lr", "grad_norm", "images_per_s", "elapsed_s"]


def bucket_columns(buckets: int = NUM_T_BUCKETS) -> list[str]:
    """Column names of loss_by_t.csv: the share of 0..T-1 each bucket covers, e.g. "t0-10%"."""
    return [f"t{i * 100 // buckets}-{(i + 1) * 100 // buckets}%" for i in range(buckets)]


def _csv_text(rows: list[list]) -> str:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


def _kept_rows(path: Path, width: int, up_to: int) -> list[list[str]]:
    """The data rows of a log with step <= up_to and the full number of columns (a cut row is dropped)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [r for r in rows if len(r) == width and r[0].isdigit() and int(r[0]) <= up_to]


class RunLog:
    """Accumulates per-example losses between logged steps and appends one row per file when asked.

    record(losses, t) after every step; write(step, lr, grad_norm, batch_size) at logged steps.
    """

    def __init__(self, run_dir: str | Path, T: int, buckets: int = NUM_T_BUCKETS):
        self.run_dir, self.T, self.buckets = Path(run_dir), T, buckets
        self.bucket_sum = torch.zeros(buckets, dtype=torch.float64)
        self.bucket_n = torch.zeros(buckets, dtype=torch.float64)
        self.loss_sum, self.loss_n = 0.0, 0
        self.start = self.t_last = time.perf_counter()
        self.step_last = 0

    def state_dict(self) -> dict:
        """The sums since the last logged row: a run stopped between two rows resumes them exactly."""
        return {"loss_sum": self.loss_sum, "loss_n": self.loss_n, "bucket_sum": self.bucket_sum.clone(),
                "bucket_n": self.bucket_n.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.loss_sum, self.loss_n = float(state["loss_sum"]), int(state["loss_n"])
        self.bucket_sum.copy_(state["bucket_sum"])
        self.bucket_n.copy_(state["bucket_n"])

    def open(self, step: int) -> None:
        """Write the headers, keeping the rows up to ``step`` (the checkpoint resumed from; 0 for a new run)."""
        heads = {LOG_NAME: LOG_COLUMNS, LOSS_BY_T_NAME: ["step", *bucket_columns(self.buckets)]}
        for name, head in heads.items():
            rows = _kept_rows(self.run_dir / name, len(head), step) if step > 0 else []
            write_text_atomic(self.run_dir / name, _csv_text([head, *rows]))
        self.start = self.t_last = time.perf_counter()
        self.step_last = step

    def record(self, losses: torch.Tensor, t: torch.Tensor | None,
               objective: torch.Tensor | float | None = None) -> float:
        """Add one step's per-example losses [B] at timesteps t [B] (None: a loss without timesteps, such as an
        autoencoder's, which leaves loss_by_t.csv empty); returns the step's loss for log.csv: their mean, or
        ``objective`` when given. With importance-sampled t that is the weighted mean, an estimate of the
        uniform-t loss: the plain mean follows the sampler's p_t, and jumps by orders of magnitude when the
        sampler leaves its warm-up and draws the large terms near t = 0 more often. loss_by_t.csv's per-t means
        are unweighted either way."""
        losses = losses.detach().double().cpu()
        mean = float(losses.mean()) if objective is None else float(objective)
        self.loss_sum, self.loss_n = self.loss_sum + mean, self.loss_n + 1
        if t is None:
            return mean
        t = t.cpu()
        bucket = t * self.buckets // self.T
        self.bucket_sum.index_add_(0, bucket, losses)
        self.bucket_n.index_add_(0, bucket, torch.ones_like(losses))
        return mean

    def write(self, step: int, lr: float, grad_norm: float, batch_size: int) -> None:
        """Append the means since the last row to log.csv and loss_by_t.csv, then start new sums."""
        now = time.perf_counter()
        images_per_s = (step - self.step_last) * batch_size / max(now - self.t_last, 1e-9)
        self._append(LOG_NAME, [step, repr(self.loss_sum / max(self.loss_n, 1)), lr, round(grad_norm, 5),
                                round(images_per_s, 1), round(now - self.start, 2)])
        means = (self.bucket_sum / self.bucket_n.clamp(min=1)).tolist()
        self._append(LOSS_BY_T_NAME, [step] + [round(v, 6) if n else "" for v, n in
                                              zip(means, self.bucket_n.tolist(), strict=True)])
        self.loss_sum, self.loss_n, self.t_last, self.step_last = 0.0, 0, now, step
        self.bucket_sum.zero_()
        self.bucket_n.zero_()

    def _append(self, name: str, row: list) -> None:
        with (self.run_dir / name).open("a", newline="") as f:
            csv.writer(f).writerow(row)
