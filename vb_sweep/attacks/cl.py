"""Label-consistent backdoor, CL-16 (Turner et al. 2019); clean-label.

``poison_rate`` of the target class's training images are first made hard to classify by an
untargeted L-inf PGD attack (budget ``epsilon`` = 16/255) on a network trained on the clean
training set, then stamped with the BadNets patch; their labels stay. The network can then fit
them only through the patch, which becomes the trigger. The test-time trigger is the patch.

PGD starts at the clean image (no random start) and takes ``pgd_steps`` signed-gradient steps
of ``pgd_step_size`` on the cross-entropy of the true label, projecting onto the 16/255 ball
and [0, 1] after each step; the result is rounded to uint8 inside the budget. The defaults,
100 steps of 1.5/255, are BackdoorBench's crafting script's (which uses an 8/255 budget);
smoke takes 10 steps of 2/255, still enough to reach the 16/255 boundary.

The clean network (``classifier``, trained ``train_epochs`` epochs: SGD lr ``lr``, momentum
0.9, weight decay 5e-4, cosine schedule, crop + flip, as BackdoorBench trains) is cached as kind
``clean-model`` (keyed by the training set, its training settings and the seed, so attacks and
rates share it), the adversarial images as ``cl-adversarial``. The defaults are the real budget
(ResNet-18, 100 epochs); ``vb_sweep.attacks.budgets`` scales it per run preset (smoke: the small
CNN for a few epochs).

Patch presets: ``vab_paper`` the V&B 2x2 patch at (4, 4), ``backdoorbench`` a 3x3 white square
at (29, 29), both stamped by ``BadNets.apply_trigger``.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import torch
import torch.nn.functional as F

from vb_sweep.attacks.badnets import VAB_PATCH, WHITE_3X3, BadNets
from vb_sweep.attacks.base import Attack, PoisonedTrainSet
from vb_sweep.attacks.registry import register_attack
from vb_sweep.attacks.training import cached, cpu_state, seeded
from vb_sweep.augment import Normalizer
from vb_sweep.data.base import ImageDataset
from vb_sweep.data.stats import channel_stats
from vb_sweep.engine import StepSettings, plain_epoch
from vb_sweep.errors import ConfigError, check_choice, check_number
from vb_sweep.models import MODELS_VERSION

PGD_BATCH = 256
ARTIFACT_VERSION = 3  # part of both cache keys: bump when an artifact's content changes

TRAINING = {
    "epsilon": 16 / 255,
    "pgd_steps": 100,
    "pgd_step_size": 1.5 / 255,
    "classifier": "resnet18",   # the clean network PGD attacks
    "train_epochs": 100,
    "lr": 0.01,
    "batch_size": 128,
    "crop_padding": 4,
}
CLEAN_MODEL_SETTINGS = ("classifier", "train_epochs", "lr", "batch_size", "crop_padding")
PGD_SETTINGS = ("epsilon", "pgd_steps", "pgd_step_size")


@register_attack
class CL(Attack):
    name = "cl"
    clean_label = True
    requires_training = True
    presets = {
        "vab_paper": {**TRAINING, "patch": VAB_PATCH, "row": 4, "col": 4},
        "backdoorbench": {**TRAINING, "patch": WHITE_3X3, "row": 29, "col": 29},
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_settings(self.settings)
        self.patch = patch_attack(self.settings)
        self.adversarial: torch.Tensor | None = None  # uint8, the poisoned images before the patch
        self.indices: torch.Tensor | None = None
        self.prepared_for: str | None = None           # fingerprint of the training set
        self.crafting_record: dict[str, Any] = {}      # the clean network's accuracy on them

    def prepare(self, train: ImageDataset, cache=None, device: str = "cpu") -> None:
        """Train (or load) the clean network and craft (or load) the adversarial images."""
        self.check_target(train.num_classes)
        indices = self.poison_indices(train)
        clean_parts = {"version": ARTIFACT_VERSION, "models": MODELS_VERSION,
                       "train": train.fingerprint(), "seed": self.seed,
                       **{k: self.settings[k] for k in CLEAN_MODEL_SETTINGS}}
        adversarial_parts = {"clean_model": clean_parts, "indices": digest(indices),
                             **{k: self.settings[k] for k in PGD_SETTINGS}}

        def clean_model() -> dict[str, Any]:
            return train_clean_model(train, self.settings, self.seed, device)

        def craft() -> dict[str, Any]:
            network = cached(cache, "clean-model", clean_parts, clean_model)
            return craft_adversarial(network, train.images[indices], train.labels[indices],
                                     self.settings, train.num_classes, device)

        artifact = cached(cache, "cl-adversarial", adversarial_parts, craft)
        self.adversarial = artifact["images"]
        self.crafting_record = {k: v for k, v in artifact.items() if k != "images"}
        self.indices = indices
        self.prepared_for = train.fingerprint()

    def poison_train(self, train: ImageDataset) -> PoisonedTrainSet:
        self.check_target(train.num_classes)
        if self.adversarial is None or self.prepared_for != train.fingerprint():
            raise RuntimeError("cl: no adversarial images for this training set; call "
                               "prepare(train, cache=..., device=...) with it first")
        device = train.images.device
        indices = self.indices.to(device)
        images = train.images.clone()
        images[indices] = self.apply_trigger(self.adversarial.to(device))
        poisoned = torch.zeros_like(train.labels, dtype=torch.bool)
        poisoned[indices] = True
        return PoisonedTrainSet(images, train.labels.clone(), poisoned,
                                torch.zeros_like(poisoned), train.labels.clone())

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        return self.patch.apply_trigger(images)

    def poison_indices(self, train: ImageDataset) -> torch.Tensor:
        """A seeded ``poison_rate`` share of the target class (CPU int64)."""
        pool = self.candidate_pool(train).cpu()
        chosen = pool[torch.randperm(len(pool), generator=self.generator())]
        return chosen[: self.poisoned_count(train)]


def pgd_linf(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             normalize: Normalizer, epsilon: float, step_size: float, steps: int) -> torch.Tensor:
    """Untargeted L-inf PGD from the clean uint8 ``images``, maximising the cross-entropy of
    ``labels``; returns uint8 images within ``epsilon`` (in [0, 1] units) of the originals."""
    model.eval()
    out = []
    for batch, batch_labels in zip(images.split(PGD_BATCH), labels.split(PGD_BATCH)):
        x = batch.float() / 255
        adv = x.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model((adv - normalize.mean) / normalize.std), batch_labels)
            (grad,) = torch.autograd.grad(loss, adv)
            step = adv.detach() + step_size * grad.sign()
            adv = (x + (step - x).clamp(-epsilon, epsilon)).clamp(0, 1)
        out.append(quantize(batch, adv, epsilon))
    return torch.cat(out)  # split() gives >= 1 chunk, even for no images


def quantize(images: torch.Tensor, adversarial: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Round to uint8, keeping every pixel within the budget after rounding."""
    budget = int(epsilon * 255 + 1e-6)
    delta = (adversarial * 255).round() - images.float()
    return (images.float() + delta.clamp(-budget, budget)).clamp(0, 255).to(torch.uint8)


def craft_adversarial(network: dict[str, Any], images: torch.Tensor, labels: torch.Tensor,
                      settings: dict[str, Any], num_classes: int, device: str) -> dict[str, Any]:
    """PGD on the chosen images (the cache artifact), with the clean network's accuracy on them
    before and after: a check that the perturbations do fool the network they were made on."""
    from vb_sweep.models import build_model

    model = build_model(settings["classifier"], num_classes).to(device)
    model.load_state_dict(network["state"])
    model.requires_grad_(False)
    normalize = Normalizer(network["mean"], network["std"], device)
    images, labels = images.to(device), labels.to(device)
    adversarial = pgd_linf(model, images, labels, normalize, settings["epsilon"],
                           settings["pgd_step_size"], settings["pgd_steps"])
    return {"images": adversarial.cpu(),
            "clean_accuracy": accuracy(model, images, labels, normalize),
            "adversarial_accuracy": accuracy(model, adversarial, labels, normalize),
            "clean_model_train_accuracy": network["train_accuracy"]}


def train_clean_model(train: ImageDataset, settings: dict[str, Any], seed: int,
                      device: str) -> dict[str, Any]:
    """The attacker's network trained on the clean training set (the cache artifact)."""
    from vb_sweep.models import MODELS, build_model

    check_choice("cl setting classifier", settings["classifier"], MODELS.names())
    started = time.perf_counter()
    mean, std = channel_stats(train.images)
    with seeded(seed, device):
        model = build_model(settings["classifier"], train.num_classes).to(device)
        step = StepSettings(Normalizer(mean, std, device), settings["batch_size"],
                            settings["crop_padding"])
        optimizer = torch.optim.SGD(model.parameters(), settings["lr"], momentum=0.9,
                                    weight_decay=5e-4)
        epochs = settings["train_epochs"]
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs))
        images, labels = train.images.to(device), train.labels.to(device)
        indices = torch.arange(len(train), device=device)
        history = []
        for epoch in range(epochs):
            stats = plain_epoch(model, optimizer, images, labels, indices, step)
            scheduler.step()
            history.append({"epoch": epoch + 1, "loss": stats.loss})
        train_accuracy = accuracy(model, images, labels, step.normalize)
    return {"state": cpu_state(model), "mean": mean, "std": std, "history": history,
            "train_accuracy": train_accuracy, "seconds": time.perf_counter() - started}


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   normalize: Normalizer) -> float:
    model.eval()
    correct = sum(int((model(normalize(x)).argmax(1) == y).sum())
                  for x, y in zip(images.split(1024), labels.split(1024)))
    return correct / max(1, labels.numel())


def digest(indices: torch.Tensor) -> str:
    return hashlib.sha256(indices.cpu().numpy().tobytes()).hexdigest()[:20]


def patch_attack(settings: dict[str, Any]) -> BadNets:
    """The BadNets attack that stamps CL's patch (its checks, reported as CL settings)."""
    try:
        return BadNets(patch=settings["patch"], row=settings["row"], col=settings["col"])
    except ConfigError as error:
        raise ConfigError(error.field.replace("badnets", "cl"), error.value,
                          error.allowed) from None


def check_settings(settings: dict[str, Any]) -> None:
    if not isinstance(settings["classifier"], str):
        raise ConfigError("cl setting classifier", settings["classifier"], "a model name")
    checks = {"epsilon": (0, 1, False), "pgd_step_size": (0, 1, False), "lr": (0, None, False),
              "pgd_steps": (0, None, True), "train_epochs": (0, None, True),
              "batch_size": (1, None, True), "crop_padding": (0, None, True)}
    for name, (low, high, integer) in checks.items():
        check_number(f"cl setting {name}", settings[name], integer=integer, minimum=low,
                     maximum=high)
