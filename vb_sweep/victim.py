"""The Victim (docs/method.md section 1): entropy-based filtering and its whole trajectory.

The Victim never depends on the Beneficiary, so its run is computed once per (poisoned set,
t_f, Victim settings, schedule, seed) and cached: the split the Beneficiary uses at each of its
epochs and, for the semi-supervised epochs, the Victim's tempered softmax on every training image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from vb_sweep.cache import register_artifact_type
from vb_sweep.engine import StepSettings, plain_epoch
from vb_sweep.metrics import iterate_logits
from vb_sweep.timing import section

# Part of the trajectory's cache key: bump when how it is computed changes.
VICTIM_ARTIFACT_VERSION = 3


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """-sum_k p_k log p_k from log_softmax, so it cannot be NaN for finite logits."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(1)


def min_max(values: torch.Tensor) -> torch.Tensor:
    low, high = values.min(), values.max()
    return (values - low) / (high - low).clamp_min(1e-12)


def warmup_threshold(epoch: int, t_f: float, step: float = 0.4) -> float:
    """The warm-up split threshold before Victim epoch ``epoch``: max(1 - step * epoch, t_f)."""
    return max(1.0 - step * epoch, t_f)


def split_suspicious(normalized_entropy: torch.Tensor, threshold: float) -> torch.Tensor:
    """Ds = {i : e_i < threshold}; Dc is the complement."""
    return normalized_entropy < threshold


class SmoothedEntropy:
    """e <- r * e + (1 - r) * e_prev across evaluations (r = 1: off), then min-max."""

    def __init__(self, r: float):
        self.r = r
        self.previous: torch.Tensor | None = None

    def update(self, raw: torch.Tensor) -> torch.Tensor:
        smoothed = raw if self.previous is None else self.r * raw + (1 - self.r) * self.previous
        self.previous = smoothed
        return min_max(smoothed)


def updates_after_epochs(epochs: int, mix_epochs: int, resplit_every: int) -> list[bool]:
    """For Beneficiary epochs 1..epochs: does the Victim train and re-split after it?
    Every ``resplit_every``-th epoch in the mix stage, every epoch after it (none after the last)."""
    return [(epoch > mix_epochs or epoch % resplit_every == 0) and epoch < epochs
            for epoch in range(1, epochs + 1)]


@register_artifact_type
@dataclass
class VictimState:
    """One split: what the Beneficiary sees from the Victim until the next re-split."""

    suspicious: torch.Tensor                     # bool (N,)
    entropy: torch.Tensor                        # float16 (N,), normalised to [0, 1]
    tempered_softmax: torch.Tensor | None = None  # float16 (N, C), softmax(V(x) / T_v)


@register_artifact_type
@dataclass
class VictimTrajectory:
    states: list[VictimState]
    state_of_epoch: list[int]  # Beneficiary epoch e (1-based) uses states[state_of_epoch[e - 1]]
    seconds: float = 0.0
    victim_epochs: int = 0
    warmup_splits: list[dict] = field(default_factory=list)

    def state_for(self, epoch: int) -> VictimState:
        return self.states[self.state_of_epoch[epoch - 1]]


@dataclass
class VictimSettings:
    t_f: float
    warm_up: int
    warm_up_step: float
    smoothing: float
    temperature: float
    epochs: int
    mix_epochs: int
    resplit_every: int
    eval_batch_size: int


def run_victim(model, optimizer, images, labels, settings: VictimSettings, step: StepSettings,
               on_split: Callable[[str, int, VictimState], None] | None = None) -> VictimTrajectory:
    """Train the Victim on the docs/method.md schedule and record every split."""
    entropy = SmoothedEntropy(settings.smoothing)
    everything = torch.arange(labels.numel(), device=labels.device)

    def evaluate(keep_softmax: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        raw, softmaxes = [], []
        with section("entropy pass"):
            for logits in iterate_logits(model, images, step.normalize, settings.eval_batch_size,
                                         step.autocast_dtype):
                raw.append(prediction_entropy(logits))
                if keep_softmax:
                    softmaxes.append(F.softmax(logits / settings.temperature, 1).half())
            return entropy.update(torch.cat(raw)), torch.cat(softmaxes) if keep_softmax else None

    def new_state(stage: str, epoch: int, threshold: float, keep_softmax: bool) -> VictimState:
        normalized, soft = evaluate(keep_softmax)
        state = VictimState(split_suspicious(normalized, threshold).cpu(),
                            normalized.half().cpu(), None if soft is None else soft.cpu())
        if on_split:
            on_split(stage, epoch, state)
        return state

    def train_on_suspicious(state: VictimState) -> None:
        suspicious = torch.nonzero(state.suspicious.to(labels.device))[:, 0]
        with section("training"):
            plain_epoch(model, optimizer, images, labels, suspicious, step)

    with section("training"):
        plain_epoch(model, optimizer, images, labels, everything, step)  # epoch 0: all of D
    victim_epochs = 1
    for epoch in range(1, settings.warm_up):
        threshold = warmup_threshold(epoch, settings.t_f, settings.warm_up_step)
        train_on_suspicious(new_state("victim_warmup", epoch, threshold, keep_softmax=False))
        victim_epochs += 1

    updates = updates_after_epochs(settings.epochs, settings.mix_epochs, settings.resplit_every)

    def used_in_sst(after_epoch: int) -> bool:
        """Whether the split made after ``after_epoch`` is still in use when SST starts (no
        re-split in epochs after_epoch+1..mix_epochs): only those need the tempered softmax."""
        return not any(updates[after_epoch:settings.mix_epochs])

    states = [new_state("victim", 0, settings.t_f, keep_softmax=used_in_sst(0))]
    state_of_epoch = []
    for epoch, update in enumerate(updates, start=1):
        state_of_epoch.append(len(states) - 1)
        if update:
            train_on_suspicious(states[-1])
            victim_epochs += 1
            states.append(new_state("victim", epoch, settings.t_f,
                                    keep_softmax=used_in_sst(epoch)))
    return VictimTrajectory(states, state_of_epoch, victim_epochs=victim_epochs)
