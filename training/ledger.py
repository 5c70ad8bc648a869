"""The step ledger: a run's per-step figures kept on the device, read back once per log interval.

On CUDA a step is only queued when Python returns from it. Reading any of its figures back (``.item()``,
``bool()``, ``float()``, ``.tolist()``) waits for the whole queue to drain and leaves the GPU idle until Python
has queued the next step. So the loss, bits/dim, gradient norm and non-finite flag of each step stay on the
device, folded by tensor operations into sums per log interval and per epoch and into the count of consecutive
skipped steps, and :meth:`StepLedger.read` copies all of it to the host in one transfer, every
``train.log_every`` steps, at the end of an epoch and when the run is asked to stop.

A skipped (non-finite) step enters no sum: its figures are replaced by zeros with ``torch.where`` (a NaN times
zero would still be NaN), so the sums equal those of the finite steps alone, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Slots of the one buffer read back: interval sums, epoch sums, skipped-step bookkeeping, the agreed stop flag.
INTERVAL = slice(0, 5)  # loss, train bits/dim, gradient norm (sums over finite steps), finite steps, skipped steps
EPOCH = slice(5, 7)  # train bits/dim (sum over finite steps), finite steps
SKIPS = slice(7, 13)  # current run of skipped steps, longest run since the last read, skipped since the last
# read, and the index, loss and gradient norm of the last skipped step
SLOTS = 13


@dataclass(frozen=True)
class Reading:
    """What one :meth:`StepLedger.read` brought back (host numbers).

    Attributes:
        loss: mean loss of the interval's finite steps (None when there were none).
        train_bpd: mean training bits/dim of the interval's finite steps (None when none).
        grad_norm: mean gradient norm of the interval's finite steps (None when none).
        skipped_in_interval: skipped steps since the last logged interval.
        epoch_bpd: mean training bits/dim of the epoch's finite steps so far (None when none).
        epoch_steps: finite steps of the epoch so far.
        longest_skip_run: the longest run of consecutive skipped steps seen since the previous read (a run
            that started before it counts whole).
        new_skips: skipped steps since the previous read.
        last_skip: ``(step, loss, grad_norm)`` of the last skipped step (None when ``new_skips == 0``).
        stop: a stop was requested (in any process, when the reading was agreed between processes).
    """

    loss: float | None
    train_bpd: float | None
    grad_norm: float | None
    skipped_in_interval: int
    epoch_bpd: float | None
    epoch_steps: int
    longest_skip_run: int
    new_skips: int
    last_skip: tuple[int, float, float] | None
    stop: bool


class StepLedger:
    """Per-step figures accumulated on ``device`` (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.values = torch.zeros(SLOTS, device=device)  # float32: step indices are exact up to 2**24

    def start_epoch(self) -> None:
        """Forget the previous epoch's sums (a device-side fill, no transfer)."""
        self.values[EPOCH].zero_()

    def add(self, loss: Tensor, nll_bpd: Tensor, grad_norm: Tensor, found_inf: Tensor, step: int) -> None:
        """Fold one step in; nothing is read back.

        Args:
            loss: ``()`` the step's loss.
            nll_bpd: ``()`` its training bits/dim.
            grad_norm: ``()`` its gradient norm before clipping.
            found_inf: ``()`` float, 1 when the step was skipped (non-finite in some process), else 0.
            step: the step's index (0-based).
        """
        finite = found_inf == 0
        figures = torch.stack([loss.float(), nll_bpd.float(), grad_norm.float()])  # (3,)
        kept = torch.where(finite, figures, 0.0)
        ok = finite.float()
        values = self.values
        values[INTERVAL] += torch.cat([kept, ok[None], found_inf[None]])
        values[EPOCH] += torch.stack([kept[1], ok])
        skip_run = (values[7] + 1.0) * found_inf
        values[SKIPS] = torch.stack(
            [
                skip_run,
                torch.maximum(values[8], skip_run),
                values[9] + found_inf,
                torch.where(finite, values[10], float(step)),
                torch.where(finite, values[11], figures[0]),
                torch.where(finite, values[12], figures[2]),
            ]
        )

    def read(self, stop_flag: Tensor | None = None) -> Reading:
        """Copy everything to the host in one transfer; restart the per-read skip counts.

        Args:
            stop_flag: ``(1,)`` the agreed stop flag (already all-reduced between processes), read in the same
                transfer; None when the caller decides on its own.
        """
        extra = stop_flag.to(self.device, torch.float32) if stop_flag is not None else self.values.new_zeros(1)
        loss, bpd, norm, steps, skipped, epoch_bpd, epoch_steps, _, longest, new, last, last_loss, last_norm, stop = (
            torch.cat([self.values, extra]).tolist()  # the one device → host transfer
        )
        self.values[8:10].zero_()

        def mean(total: float, count: float) -> float | None:
            return total / count if count else None

        return Reading(
            loss=mean(loss, steps),
            train_bpd=mean(bpd, steps),
            grad_norm=mean(norm, steps),
            skipped_in_interval=int(skipped),
            epoch_bpd=mean(epoch_bpd, epoch_steps),
            epoch_steps=int(epoch_steps),
            longest_skip_run=int(longest),
            new_skips=int(new),
            last_skip=(int(last), last_loss, last_norm) if new else None,
            stop=bool(stop),
        )

    def start_interval(self) -> None:
        """Forget the logged interval's sums (after its metrics line was written)."""
        self.values[INTERVAL].zero_()
