"""Self-balancing weights: one scale per distillation term, calibrated once so that the term carries a chosen
share of the detection loss, then held fixed.

Why: each loss has its own magnitude (CWD's KL sums, MGD's squared errors, PKD's bounded correlations), and
that magnitude moves with the models and the data, so a weight swept on one task is a guess on the next.
Calibration measures the magnitudes on the user's own first batches instead.

During the first `steps` batches the terms are computed but carry no weight (the student trains on the
detection loss alone) and their means are recorded with the detection loss's. Then, per term,
    scale = share * mean(detection loss per image) / mean(term per image)            (distill_balance_by=value)
    scale = share * mean(|d detection / d F|) / mean(|d term / d F|)                  (distill_balance_by=gradient)
F being the distilled student maps (the gradient's L2 norm over all of them), and from there on the term
enters the loss as scale * term (times distill_weight and the schedule). Value share is simple and cheap;
gradient share matches what each term actually pushes into the layers it distils (one extra backward through
the head per term and calibration batch).
Under DDP the sums are all-reduced first, so every rank holds the same scales. Non-finite values (an AMP
overflow) are left out of the means, per term, rather than spoiling them. Calibration ends within the first
epoch (the trainer caps `steps` at its batches), so every checkpoint of a balanced run holds its scales.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from ultralytics.utils import LOGGER


class Balancer:
    """Per-term scales: calibrated from the first `steps` observations, or given (resume, reuse)."""

    def __init__(self, share: float, steps: int, names: list[str], scales: dict[str, float] | None = None,
                 fallback: dict[str, float] | None = None) -> None:
        """fallback: the losses' own weights, used if calibration finds no detection loss to balance against."""
        self.share, self.steps, self.names = share, steps, list(names)
        self.scales = dict(scales) if scales is not None else None
        self.fallback = dict(fallback or {})
        self._sums: torch.Tensor | None = None  # detection, each term (float64); then the count of finite values
        self._count = 0

    @property
    def calibrated(self) -> bool:
        return self.scales is not None

    def scale(self, name: str) -> float:
        """Multiplier for the raw term `name`: 0 while calibrating, then its scale."""
        return 0.0 if self.scales is None else self.scales[name]

    def observe(self, detection: torch.Tensor, raw: torch.Tensor) -> None:
        """Record one batch: the detection loss's quantity (scalar) and the raw terms' (n_terms,): values per image,
        or gradient norms."""
        if self.scales is not None:
            return
        values = torch.cat([detection.detach().reshape(1), raw.detach().reshape(-1)]).double()
        finite = torch.isfinite(values)
        # Every rank counts the same batches whatever their values, so the all-reduce below meets on all ranks.
        step = torch.cat([torch.where(finite, values, torch.zeros_like(values)), finite.double()])
        self._sums = step if self._sums is None else self._sums + step
        self._count += 1
        if self._count >= self.steps:
            self._finish()

    def _finish(self) -> None:
        sums = self._sums
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)  # every rank ends with the same scales
        n = len(self.names) + 1
        counts = sums[n:].tolist()
        means = [total / count if count else float("nan") for total, count in zip(sums[:n].tolist(), counts)]
        detection, terms = means[0], means[1:]
        self._sums = None
        if not detection > 0:  # nothing to balance against (e.g. box=cls=dfl=0): keep the manual weights
            self.scales = {name: self.fallback.get(name, 0.0) for name in self.names}
            LOGGER.warning(f"Distillation: the detection loss was {detection} over the {self.steps} calibration "
                           f"batches, so there is no share to calibrate to; using the losses' own weights {self.scales}.")
            return
        self.scales = {}
        for name, mean in zip(self.names, terms):
            if mean > 0:
                self.scales[name] = self.share * detection / mean
            else:
                self.scales[name] = 0.0
                LOGGER.warning(f"Distillation: the {name} term was {mean} (0 or never finite) over the {self.steps} "
                               "calibration batches; it stays off.")
        shown = ", ".join(f"{n} {s:.4g}" for n, s in self.scales.items())
        LOGGER.info(f"Distillation: balanced after {self.steps} batches (detection loss {detection:.4g} per image, "
                    f"share {self.share}): scales {shown}")
