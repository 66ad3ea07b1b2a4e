"""Input-aware dynamic backdoor (Nguyen & Tran 2020, "IAD"); dirty-label, with cross samples.

The attacker first trains two encoder-decoder generators on the clean training set, following
the authors' code (and BackdoorBench's copy of it):

1. the mask generator M alone for ``mask_epochs`` epochs. Loss: ``lambda_div`` * diversity
   (distance of two inputs over the distance of their masks, so different images get different
   masks) + ``lambda_norm`` * mean(relu(mask - ``mask_density``)) (small masks). Adam, lr
   ``lr_mask``, cut x0.1 after each epoch of ``mask_lr_milestones`` (10 and 20).
2. the pattern generator G jointly with a classifier (``classifier``, a model name) for
   ``pattern_epochs`` epochs, M frozen. In each batch a ``p_attack`` share carries its own
   trigger and the target label, a ``p_cross`` share carries *another* image's pattern and
   mask and keeps its label (so a trigger fires only on the image it was made for); loss:
   cross-entropy + ``lambda_div`` * diversity of the patterns. SGD lr ``lr_classifier`` and
   Adam lr ``lr_pattern``, both constant (BackdoorBench's milestones lie past its 100 epochs).

A triggered image is x + (G(x) - x) * M(x), with M(x) squashed to a nearly binary mask.
Augmentation during generator training: random crop with ``crop_padding`` and horizontal flip
(the authors also rotate by up to 10 degrees; left out, as it is not a batched op here). After
its stage each generator's BatchNorm statistics are recomputed over the training images, since
both run in eval mode afterwards (``recalibrate_batch_norm``).

The platform then poisons statically: ``poison_rate`` of the training set get their own trigger
and the target label; ``cross_ratio`` times as many other samples get the pattern and mask of
another training image and keep their true label (marked in ``cross``). The trained generators
go into the artifact cache (kind ``dynamic-generators``, keyed by the training set's fingerprint,
the generator settings, the target and the seed; not by ``poison_rate`` or ``cross_ratio``, so a
rate sweep trains them once).

Budget: the defaults are the real one (BackdoorBench's CIFAR-10 configuration: PreAct-ResNet-18,
25 mask epochs, 100 joint epochs, generators of width 32). ``vb_sweep.attacks.budgets`` scales it
per run preset: smoke trains a small CNN with narrower generators for a few epochs on the
generated data; ``train_images`` trains the generators on a seeded subset of the training set.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vb_sweep.attacks.base import Attack, PoisonedTrainSet
from vb_sweep.attacks.registry import register_attack
from vb_sweep.attacks.training import cached, cpu_state, seeded
from vb_sweep.augment import Normalizer, standard_augment
from vb_sweep.data.base import ImageDataset
from vb_sweep.data.stats import channel_stats
from vb_sweep.errors import ConfigError, check_choice, check_number
from vb_sweep.models import MODELS_VERSION
from vb_sweep.models.batchnorm import reestimate_batchnorm

EPSILON = 1e-7
GENERATOR_STEPS = 3  # down/up-sampling steps: images must be divisible by 2**3
TRIGGER_CHUNK = 512  # images per generator pass when applying the trigger
ARTIFACT_VERSION = 2  # part of the cache key: bump when the generators or their training change

SETTINGS: dict[str, Any] = {
    "classifier": "preact_resnet18",  # trained jointly with G (the defense trains its own)
    "mask_epochs": 25,
    "pattern_epochs": 100,
    "generator_width": 32,            # channels of the first encoder block
    "batch_size": 128,
    "lr_mask": 0.01,
    "mask_lr_milestones": [10, 20],   # mask-stage epochs after which lr_mask is cut x0.1
    "lr_pattern": 0.01,
    "lr_classifier": 0.01,
    "lambda_div": 1.0,
    "lambda_norm": 100.0,
    "mask_density": 0.032,
    "p_attack": 0.1,                  # shares of each generator-training batch
    "p_cross": 0.1,
    "crop_padding": 5,
    "train_images": None,             # generator training on a subset of this size (None: all)
    "cross_ratio": 1.0,               # cross samples per poisoned sample in the poisoned set
}
# Settings that only shape the static poisoned set, not the generators (left out of their key).
POISONING_ONLY = ("cross_ratio",)


@register_attack
class Dynamic(Attack):
    name = "dynamic"
    clean_label = False
    requires_training = True
    presets = {"vab_paper": dict(SETTINGS), "backdoorbench": dict(SETTINGS)}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_settings(self.settings)
        self.pattern_gen: Generator | None = None
        self.mask_gen: Generator | None = None
        self.normalize: Normalizer | None = None
        self.training_record: dict[str, Any] = {}  # history and seconds of the generator run

    # -- training -------------------------------------------------------------------------
    def prepare(self, train: ImageDataset, cache=None, device: str = "cpu") -> None:
        """Train the generators, or load them from ``cache`` when trained before."""
        self.check_target(train.num_classes)
        check_image_size(train.images.shape)
        parts = {"version": ARTIFACT_VERSION, "models": MODELS_VERSION,
                 "train": train.fingerprint(), "target": self.target, "seed": self.seed,
                 "settings": {k: v for k, v in self.describe()["settings"].items()
                              if k not in POISONING_ONLY}}

        def build() -> dict[str, Any]:
            return train_generators(train, self.target, self.settings, self.seed, device)

        self.load_generators(cached(cache, "dynamic-generators", parts, build), device)

    def load_generators(self, artifact: dict[str, Any], device: str) -> None:
        channels = artifact["mean"].numel()
        width = artifact["width"]
        self.pattern_gen = Generator(channels, channels, width).to(device).eval()
        self.mask_gen = Generator(channels, 1, width).to(device).eval()
        self.pattern_gen.load_state_dict(artifact["pattern"])
        self.mask_gen.load_state_dict(artifact["mask"])
        self.normalize = Normalizer(artifact["mean"], artifact["std"], device)
        self.training_record = {"history": artifact["history"], "seconds": artifact["seconds"]}

    # -- poisoning --------------------------------------------------------------------------
    def poison_train(self, train: ImageDataset) -> PoisonedTrainSet:
        self.check_target(train.num_classes)
        self.require_prepared()
        n = len(train)
        order = torch.randperm(n, generator=self.generator())
        n_poison = self.poisoned_count(train)
        n_cross = min(round(self.settings["cross_ratio"] * n_poison), n - n_poison)
        partners = other_indices(order[n_poison:n_poison + n_cross], n, self.generator(1))
        order, partners = order.to(train.images.device), partners.to(train.images.device)
        chosen, crossed = order[:n_poison], order[n_poison:n_poison + n_cross]

        images, labels = train.images.clone(), train.labels.clone()
        images[chosen] = self.apply_trigger(train.images[chosen])
        labels[chosen] = self.target
        patterns, masks = self.trigger_parts(train.images[partners])
        images[crossed] = stamp(train.images[crossed], patterns, masks)
        poisoned = torch.zeros_like(labels, dtype=torch.bool)
        poisoned[chosen] = True
        cross = torch.zeros_like(poisoned)
        cross[crossed] = True
        return PoisonedTrainSet(images, labels, poisoned, cross, train.labels.clone())

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        """Each image with its own generated pattern inside its own generated mask."""
        patterns, masks = self.trigger_parts(images)
        return stamp(images, patterns, masks)

    def trigger_parts(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """G(x) in [0, 1] (N, C, H, W) and the nearly binary M(x) (N, 1, H, W), float32 on the
        images' device."""
        self.require_prepared()
        device = self.normalize.mean.device
        patterns, masks = [], []
        with torch.no_grad():
            for chunk in images.split(TRIGGER_CHUNK):
                x = self.normalize(chunk.to(device))
                patterns.append(self.pattern_gen(x).to(images.device))
                masks.append(mask_threshold(self.mask_gen(x)).to(images.device))
        return torch.cat(patterns), torch.cat(masks)  # split() gives >= 1 chunk, even for 0

    def require_prepared(self) -> None:
        if self.pattern_gen is None:
            raise RuntimeError("dynamic: the trigger generators are not trained yet; call "
                               "prepare(train, cache=..., device=...) before poison_train() or "
                               "apply_trigger()")


def stamp(images: torch.Tensor, patterns: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """x + (pattern - x) * mask on uint8 images, rounded back to uint8."""
    x = images.float() / 255
    return ((x + (patterns - x) * masks) * 255).round().clamp(0, 255).to(torch.uint8)


def other_indices(indices: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """For each index, a uniformly drawn different index in 0..n-1 (a cross sample's partner)."""
    if n < 2:
        return indices.clone()
    drawn = torch.randint(0, n - 1, indices.shape, generator=generator)
    return drawn + (drawn >= indices).long()


# -- the generators (the authors' encoder-decoder) ----------------------------------------------
def conv_block(in_channels: int, out_channels: int, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1),
              nn.BatchNorm2d(out_channels, momentum=0.05)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class Generator(nn.Module):
    """Three encoder steps (two conv blocks, 2x max-pool; width, 2x, 4x channels), a middle
    block, three decoder steps (2x bilinear upsampling, two conv blocks halving the channels);
    output tanh(.) / 2 + 0.5 in [0, 1]. ``out_channels``: C for patterns, 1 for masks."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        current, following = in_channels, width
        for step in range(GENERATOR_STEPS):
            layers += [conv_block(current, following), conv_block(following, following),
                       nn.MaxPool2d(2)]
            current = following
            if step < GENERATOR_STEPS - 1:
                following *= 2
        layers.append(conv_block(current, current))
        for step in range(GENERATOR_STEPS):
            last = step == GENERATOR_STEPS - 1
            out = out_channels if last else current // 2
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       conv_block(current, current), conv_block(current, out, relu=not last)]
            current = out
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.body(x)) / (2 + EPSILON) + 0.5


def mask_threshold(mask: torch.Tensor) -> torch.Tensor:
    """The authors' soft step: values above 0.5 go to ~1, below to ~0, still differentiable."""
    return torch.tanh(mask * 20 - 10) / (2 + EPSILON) + 0.5


def diversity_loss(inputs1: torch.Tensor, inputs2: torch.Tensor, outputs1: torch.Tensor,
                   outputs2: torch.Tensor) -> torch.Tensor:
    """mean over the batch of ||x1 - x2|| / ||g(x1) - g(x2)|| (RMS distances per sample)."""
    input_distance = (inputs1 - inputs2).square().mean(dim=(1, 2, 3)).sqrt()
    output_distance = (outputs1 - outputs2).square().mean(dim=(1, 2, 3)).sqrt()
    return (input_distance / (output_distance + EPSILON)).mean()


# -- training -----------------------------------------------------------------------------------
def train_generators(train: ImageDataset, target: int, settings: dict[str, Any], seed: int,
                     device: str) -> dict[str, Any]:
    """Both stages; returns the cache artifact (CPU state dicts, normalisation, history)."""
    from vb_sweep.models import MODELS, build_model

    check_choice("dynamic setting classifier", settings["classifier"], MODELS.names())
    started = time.perf_counter()
    with seeded(seed, device):
        images, labels = training_subset(train, settings["train_images"], seed)
        images, labels = images.to(device), labels.to(device)
        mean, std = channel_stats(train.images)
        normalize = Normalizer(mean, std, device)
        channels, width = images.shape[1], settings["generator_width"]
        mask_gen = Generator(channels, 1, width).to(device)
        pattern_gen = Generator(channels, channels, width).to(device)
        classifier = build_model(settings["classifier"], train.num_classes).to(device)
        history = train_mask_stage(mask_gen, images, normalize, settings)
        recalibrate_batch_norm(mask_gen, images, normalize, settings["batch_size"])
        history += train_pattern_stage(pattern_gen, mask_gen, classifier, images, labels,
                                       target, normalize, settings)
        recalibrate_batch_norm(pattern_gen, images, normalize, settings["batch_size"])
    return {"pattern": cpu_state(pattern_gen), "mask": cpu_state(mask_gen), "width": width,
            "mean": mean, "std": std, "history": history,
            "seconds": time.perf_counter() - started}


def training_subset(train: ImageDataset, size: int | None, seed: int):
    if size is None or size >= len(train):
        return train.images, train.labels
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:size]
    return train.images[chosen], train.labels[chosen]


def train_mask_stage(mask_gen: nn.Module, images: torch.Tensor, normalize: Normalizer,
                     settings: dict[str, Any]) -> list[dict]:
    epochs = settings["mask_epochs"]
    optimizer = torch.optim.Adam(mask_gen.parameters(), settings["lr_mask"], betas=(0.5, 0.9))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, settings["mask_lr_milestones"],
                                                     0.1)
    history = []
    for epoch in range(epochs):
        mask_gen.train()
        totals = torch.zeros(3, device=images.device)
        for batch1, batch2 in paired_batches(images.shape[0], settings["batch_size"],
                                             images.device):
            x1, x2 = augmented(images, batch1, normalize, settings), augmented(
                images, batch2, normalize, settings)
            # One pass for both halves (the authors make two; BN then sees 2B images, not B).
            masks1, masks2 = mask_threshold(mask_gen(torch.cat([x1, x2]))).chunk(2)
            loss_div = diversity_loss(x1, x2, masks1, masks2)
            loss_norm = F.relu(masks1 - settings["mask_density"]).mean()
            loss = settings["lambda_norm"] * loss_norm + settings["lambda_div"] * loss_div
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals += torch.stack([loss_div.detach(), loss_norm.detach(),
                                   masks1.detach().mean()]) * batch1.numel()
        scheduler.step()
        div, norm, density = (totals / images.shape[0]).tolist()
        history.append({"stage": "mask", "epoch": epoch + 1, "loss_div": div, "loss_norm": norm,
                        "mask_density": density})
    return history


def train_pattern_stage(pattern_gen: nn.Module, mask_gen: nn.Module, classifier: nn.Module,
                        images: torch.Tensor, labels: torch.Tensor, target: int,
                        normalize: Normalizer, settings: dict[str, Any]) -> list[dict]:
    mask_gen.eval().requires_grad_(False)
    opt_classifier = torch.optim.SGD(classifier.parameters(), settings["lr_classifier"],
                                     momentum=0.9, weight_decay=5e-4)
    opt_pattern = torch.optim.Adam(pattern_gen.parameters(), settings["lr_pattern"],
                                   betas=(0.5, 0.9))
    history = []
    for epoch in range(settings["pattern_epochs"]):
        pattern_gen.train()
        classifier.train()
        totals = torch.zeros(4, device=images.device)  # loss; clean, backdoor, cross correct
        counts = torch.zeros(3)                          # clean, backdoor, cross samples
        for batch1, batch2 in paired_batches(images.shape[0], settings["batch_size"],
                                             images.device):
            x1, x2 = augmented(images, batch1, normalize, settings), augmented(
                images, batch2, normalize, settings)
            y1 = labels[batch1]
            n_bd = int(settings["p_attack"] * batch1.numel())
            n_cross = int(settings["p_cross"] * batch1.numel())
            bd, patterns1 = triggered(pattern_gen, mask_gen, x1[:n_bd], x1[:n_bd], normalize)
            crossed, patterns2 = triggered(pattern_gen, mask_gen, x1[n_bd:n_bd + n_cross],
                                           x2[n_bd:n_bd + n_cross], normalize)
            inputs = torch.cat([bd, crossed, x1[n_bd + n_cross:]])
            targets = torch.cat([torch.full_like(y1[:n_bd], target), y1[n_bd:]])
            logits = classifier(inputs)
            loss = F.cross_entropy(logits, targets)
            pairs = min(n_bd, n_cross)
            if pairs:
                loss = loss + settings["lambda_div"] * diversity_loss(
                    x1[:pairs], x2[n_bd:n_bd + pairs], patterns1[:pairs], patterns2[:pairs])
            opt_classifier.zero_grad(set_to_none=True)
            opt_pattern.zero_grad(set_to_none=True)
            loss.backward()
            opt_classifier.step()
            opt_pattern.step()
            correct = (logits.detach().argmax(1) == targets).float()
            totals += torch.stack([loss.detach() * batch1.numel(), correct[n_bd + n_cross:].sum(),
                                   correct[:n_bd].sum(), correct[n_bd:n_bd + n_cross].sum()])
            counts += torch.tensor([batch1.numel() - n_bd - n_cross, n_bd, n_cross])
        loss, clean, bd, cross = totals.tolist()
        n_clean, n_bd, n_cross = counts.clamp(min=1).tolist()
        history.append({"stage": "pattern", "epoch": epoch + 1, "loss": loss / images.shape[0],
                        "clean_accuracy": clean / n_clean, "backdoor_accuracy": bd / n_bd,
                        "cross_accuracy": cross / n_cross})
    return history


def recalibrate_batch_norm(module: nn.Module, images: torch.Tensor, normalize: Normalizer,
                           batch_size: int) -> None:
    """Recompute BatchNorm running statistics as exact averages over the training images, and
    leave the generator in eval mode.

    The generators run in eval mode after their stage (M during the pattern stage, both when
    poisoning), where BN uses running statistics. With momentum 0.05 these lag the weights by
    ~20 steps: harmless after the authors' ~10,000 steps, but after the few dozen of a smoke
    budget eval-mode masks come out much larger and blurrier than trained ones."""
    reestimate_batchnorm(module, images, normalize, batch_size).eval()


def triggered(pattern_gen: nn.Module, mask_gen: nn.Module, inputs: torch.Tensor,
              sources: torch.Tensor, normalize: Normalizer) -> tuple[torch.Tensor, torch.Tensor]:
    """``inputs`` carrying the triggers generated from ``sources`` (all in normalised units):
    sources = inputs for backdoor samples, other images for cross samples."""
    patterns = (pattern_gen(sources) - normalize.mean) / normalize.std
    masks = mask_threshold(mask_gen(sources))
    return inputs + (patterns - inputs) * masks, patterns


def augmented(images: torch.Tensor, batch: torch.Tensor, normalize: Normalizer,
              settings: dict[str, Any]) -> torch.Tensor:
    return normalize(standard_augment(images[batch], settings["crop_padding"]))


def paired_batches(n: int, batch_size: int, device: torch.device):
    """Two independent shuffles of 0..n-1 cut into batches (the authors' two data loaders)."""
    first = torch.randperm(n, device=device).split(batch_size)
    second = torch.randperm(n, device=device).split(batch_size)
    return zip(first, second)


# -- settings checks ----------------------------------------------------------------------------
def check_settings(settings: dict[str, Any]) -> None:
    if not isinstance(settings["classifier"], str):
        raise ConfigError("dynamic setting classifier", settings["classifier"], "a model name")
    for name in ("mask_epochs", "pattern_epochs"):
        _number(settings, name, integer=True, minimum=0)
    for name in ("generator_width", "batch_size", "crop_padding"):
        _number(settings, name, integer=True, minimum=1 if name != "crop_padding" else 0)
    for name in ("lr_mask", "lr_pattern", "lr_classifier", "lambda_div", "lambda_norm",
                 "cross_ratio"):
        _number(settings, name, minimum=0)
    for name in ("mask_density", "p_attack", "p_cross"):
        _number(settings, name, minimum=0, maximum=1)
    if settings["p_attack"] + settings["p_cross"] > 1:
        raise ConfigError("dynamic setting p_attack + p_cross",
                          settings["p_attack"] + settings["p_cross"], "at most 1")
    milestones = settings["mask_lr_milestones"]
    if not isinstance(milestones, (list, tuple)) or any(
            isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in milestones):
        raise ConfigError("dynamic setting mask_lr_milestones", milestones,
                          "a list of epochs (integers >= 1)")
    if settings["train_images"] is not None:
        _number(settings, "train_images", integer=True, minimum=2)


def check_image_size(shape: torch.Size) -> None:
    factor = 2 ** GENERATOR_STEPS
    if shape[2] % factor or shape[3] % factor:
        raise ConfigError("dynamic image size", tuple(shape[2:]),
                          f"height and width divisible by {factor}")


def _number(settings: dict[str, Any], name: str, *, integer: bool = False,
            minimum: float = 0, maximum: float | None = None) -> None:
    check_number(f"dynamic setting {name}", settings[name], integer=integer, minimum=minimum,
                 maximum=maximum)
