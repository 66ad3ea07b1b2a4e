"""Trial configuration: every constant of docs/method.md is a field here, presets fill them in
(their values: vb_sweep/presets.py).

A ``TrialConfig`` is a flat dataclass of JSON-able values, so it is at once the Ray Tune param
space entry, the MLflow params of a trial and the descriptive columns of its Parquet row.
``validate()`` checks every field and raises ``ConfigError`` (field + allowed values) before any
data is loaded or any cluster work starts.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from vb_sweep.errors import (MAX_SEED, ConfigError, check_choice, check_flag, check_fraction,
                             check_number)
from vb_sweep.presets import PRESETS, RUN_PRESETS, scaled_schedule
from vb_sweep.variants import VariantFlags, variant_flags, variant_names

ATTENTION_INTERPOLATIONS = ("bilinear", "nearest")
# How the Beneficiary's passes of a mixing step meet BatchNorm (docs/method.md section 9):
# - "authors": as the authors' code runs them. The no-grad passes (the attention on the clean
#   views, SST's pseudo-labels on the unlabeled views) run in train mode, one view at a time, so
#   batch statistics normalise them and BN's running statistics see clean images; the training
#   forwards are separate passes too (mixed first half, mixed second half, each unlabeled view).
# - "joint": the attention in eval mode and one concatenated training forward, so the running
#   statistics are built from the training batch only (mixed images, plus SST's unlabeled views).
BATCHNORM_PASSES = ("authors", "joint")
# The BatchNorm running statistics the Beneficiary is evaluated and continues with after each
# SST epoch: "running", as the train-mode passes leave them (the authors'); "credible",
# re-estimated on the credible set Dc of the current split (an option of ours: the running
# statistics of small unlabeled batches make SST's BA and ASR swing, docs/method.md section 9).
SST_BATCHNORM = ("running", "credible")
# Images per class at most: above every real dataset's (CIFAR-10 5,000, GTSRB 2,250), and the
# generated data at this size already takes 1.8 GB of uint8 images.
MAX_PER_CLASS = 60_000
# The optimisers' update kernels (torch.optim's implementations of the same update): "default",
# torch's own choice; "for-loop", one parameter at a time; "foreach", all parameters in a few
# multi-tensor ops; "fused", one fused kernel (docs/benchmarks.md measures them).
OPTIMIZER_KERNELS = ("default", "for-loop", "foreach", "fused")
DEVICES = "auto | cpu | cuda | cuda:N"


@dataclass
class TrialConfig:
    # -- what is run ----------------------------------------------------------------------
    preset: str = "smoke"
    dataset: str = "synthetic"
    data_root: str | None = None
    train_per_class: int | None = None     # subset of the training set (None: all)
    test_per_class: int | None = None
    model: str = "small_cnn"
    attack: str = "badnets"
    attack_preset: str = "vab_paper"
    poison_rate: float | None = None       # None: the attack's default (0.1)
    target: int = 0
    defense: str = "vab"
    augment: str = "attentionmix"
    t_f: float = 0.2
    t_m: float = 0.1
    seed: int = 0
    # -- Beneficiary schedule (docs/method.md section 2/3, scaled by preset) ----------------------
    epochs: int = 200
    mix_epochs: int = 100                  # epochs 1..mix_epochs: Dc with AttentionMix; then SST
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: tuple[int, ...] = (50, 100, 150)  # lr *= gamma after each of these epochs
    lr_gamma: float = 0.1
    crop_padding: int = 4
    horizontal_flip: bool | None = None    # None: on, except for gtsrb (mirror-image classes)
    # -- Victim (docs/method.md section 1) ------------------------------------------------------
    victim_model: str | None = None        # None: the Beneficiary's model (the authors': resnet18)
    victim_lr: float = 1e-3
    victim_weight_decay: float = 5e-4
    victim_batch_size: int = 128
    warm_up: int = 3                       # epoch 0 on all of D, then warm_up - 1 epochs on Ds
    warm_up_step: float = 0.4              # warm-up threshold max(1 - step * epoch, t_f)
    entropy_smoothing: float = 0.75        # r; 1.0 turns smoothing off
    resplit_every: int = 5                 # re-split period during the mix stage (1 in SST)
    # -- AttentionMix and SST --------------------------------------------------------------
    attention_interpolation: str = "bilinear"
    sst_augmentations: int = 2             # K
    # The fewest unlabeled images an SST step draws (cycling through Ds) when a batch that covers
    # Ds once per epoch would be smaller. The authors' code has no floor (1 reproduces it): with
    # a tiny Ds (SIG, CL and WaNet at cpu scale set aside 30-130 images of 20,000) every step
    # then passes ONE image through BatchNorm in train mode, four times, and running statistics
    # taken from single images ruin the Beneficiary's BA (SIG F+AT+SST: 0.44 against F+AT's
    # 0.63). The expected unlabeled weight per image and epoch is the same either way, and a Ds
    # of the usual size (10% of the data: 13 images a step) never meets the floor. A Ds under
    # the floor is left out of the unlabeled term (smoke Blend's 2 images: F+AT+SST 0.904
    # without them, 0.738 with them in every step).
    min_unlabeled_batch: int = 8
    sharpen_temperature: float | None = None  # None: one-hot argmax pseudo-labels
    victim_temperature: float = 3.0        # T_v
    lambda_u: tuple[float, float] = (0.1, 0.5)
    lambda_u_switch: int = 150             # lambda_u[1] in epochs after this one (1-based)
    # -- engine ----------------------------------------------------------------------------
    device: str = "auto"
    amp: bool = True                       # bf16 autocast on CUDA and bf16-native CPUs
    eval_batch_size: int = 1024
    batchnorm_passes: str = "authors"      # BATCHNORM_PASSES; "joint": the old engine
    share_mix_stage: bool = True           # start the SST stage from the cached mix stage
    sst_batchnorm: str = "running"         # SST_BATCHNORM
    # Diagnostic, changes no training: after every epoch also evaluate a copy of the Beneficiary
    # whose BatchNorm running statistics are re-estimated on the clean training images
    # (history columns *_clean_bn), to tell the running statistics' part in BA from the weights'.
    batchnorm_diagnostic: bool = False
    # How the networks run, without changing what they compute (docs/benchmarks.md "Engine
    # options": measured on CPUs and GPUs, and each one's equivalence test).
    channels_last: bool = True             # the networks' weights and activations in NHWC
    compile: bool = False                  # torch.compile every network of the trial
    optimizer_kernel: str = "default"      # OPTIMIZER_KERNELS

    # ---------------------------------------------------------------------------------------
    @property
    def flags(self) -> VariantFlags:
        return variant_flags(self.defense)

    @property
    def flip(self) -> bool:
        """GTSRB has classes that are mirror images of each other (turn left/right, ...), so a
        horizontal flip would swap their labels; every other dataset flips by default."""
        if self.horizontal_flip is not None:
            return self.horizontal_flip
        return self.dataset != "gtsrb"

    @property
    def victim_network(self) -> str:
        """The Victim's architecture. The authors' Victim is a ResNet-18 whatever the
        Beneficiary's (docs/method.md section 9); the smoke and cpu presets give it the
        Beneficiary's small network, which a CPU trains in minutes."""
        return self.victim_model or self.model

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrialConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ConfigError("config field", sorted(unknown)[0], sorted(names))
        values = dict(values)
        for tuple_field in ("lr_milestones", "lambda_u"):
            if tuple_field in values and values[tuple_field] is not None:
                if not isinstance(values[tuple_field], (list, tuple)):
                    raise ConfigError(tuple_field, values[tuple_field],
                                      "a list, e.g. [50, 100, 150] or [0.1, 0.5]")
                values[tuple_field] = tuple(values[tuple_field])
        return cls(**values)

    def replace(self, **changes) -> "TrialConfig":
        return TrialConfig.from_dict({**self.to_dict(), **changes})

    def validate(self) -> "TrialConfig":
        from vb_sweep.attacks import ATTACKS
        from vb_sweep.data import DATASETS
        from vb_sweep.data.registry import NUM_CLASSES
        from vb_sweep.mixing import AUGMENTATIONS
        from vb_sweep.models import MODELS

        check_choice("preset", self.preset, PRESETS)
        check_choice("dataset", self.dataset, DATASETS.names())
        check_device(self.device)
        check_choice("model", self.model, MODELS.names())
        if self.victim_model is not None:
            check_choice("victim_model", self.victim_model, MODELS.names())
        check_choice("attack", self.attack, ATTACKS.names())
        attack_cls = ATTACKS.get(self.attack)
        check_choice("attack_preset", self.attack_preset, attack_cls.presets)
        if self.poison_rate is not None:
            check_fraction("poison_rate", self.poison_rate)
        check_choice("defense", self.defense, variant_names())
        check_choice("augment", self.augment, AUGMENTATIONS.names())
        check_fraction("t_f", self.t_f)
        check_fraction("t_m", self.t_m)
        check_fraction("entropy_smoothing", self.entropy_smoothing)
        check_choice("attention_interpolation", self.attention_interpolation,
                     ATTENTION_INTERPOLATIONS)
        check_choice("batchnorm_passes", self.batchnorm_passes, BATCHNORM_PASSES)
        check_choice("sst_batchnorm", self.sst_batchnorm, SST_BATCHNORM)
        check_choice("optimizer_kernel", self.optimizer_kernel, OPTIMIZER_KERNELS)
        for name in ("amp", "share_mix_stage", "batchnorm_diagnostic", "channels_last",
                     "compile"):
            check_flag(name, getattr(self, name))
        check_number("seed", self.seed, integer=True, minimum=0, maximum=MAX_SEED)
        check_number("target", self.target, integer=True, minimum=0,
                     maximum=NUM_CLASSES[self.dataset] - 1)
        for name in ("epochs", "batch_size", "victim_batch_size", "warm_up", "resplit_every",
                     "sst_augmentations", "min_unlabeled_batch", "eval_batch_size"):
            check_number(name, getattr(self, name), integer=True, minimum=1)
        if not 0 <= self.mix_epochs <= self.epochs:
            raise ConfigError("mix_epochs", self.mix_epochs, f"0..epochs ({self.epochs})")
        for name in ("train_per_class", "test_per_class"):
            if getattr(self, name) is not None:
                check_number(name, getattr(self, name), integer=True, minimum=1,
                             maximum=MAX_PER_CLASS)
        self._validate_optimisation()
        return self

    def _validate_optimisation(self) -> None:
        """The learning rates, schedules and temperatures: finite numbers in their ranges."""
        for name in ("lr", "momentum", "weight_decay", "lr_gamma", "victim_lr",
                     "victim_weight_decay", "warm_up_step"):
            check_number(name, getattr(self, name), minimum=0)
        check_number("momentum", self.momentum, maximum=1)
        for name in ("crop_padding", "lambda_u_switch"):
            check_number(name, getattr(self, name), integer=True, minimum=0)
        for milestone in self.lr_milestones:
            check_number("lr_milestones", milestone, integer=True, minimum=0)
        if len(self.lambda_u) != 2:
            raise ConfigError("lambda_u", list(self.lambda_u),
                              "two weights: [before lambda_u_switch, after]")
        for weight in self.lambda_u:
            check_number("lambda_u", weight, minimum=0)
        check_number("victim_temperature", self.victim_temperature, minimum=1e-6)
        if self.sharpen_temperature is not None:
            check_number("sharpen_temperature", self.sharpen_temperature, minimum=1e-6)
        check_choice("horizontal_flip", self.horizontal_flip, (None, True, False))


def check_device(device) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether this machine has it is checked where
    the trials run: ``check_device_present``)."""
    if not isinstance(device, str) or not (
            device in ("auto", "cpu", "cuda")
            or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError("device", device, DEVICES)
    return device


def check_device_present(device: str) -> None:
    """A CUDA device that this machine does not have is a ``ConfigError``."""
    import torch

    if not device.startswith("cuda"):
        return
    count = torch.cuda.device_count()
    index = int(device[5:]) if ":" in device else 0
    if index >= count:
        raise ConfigError("device", device, f"{DEVICES}; this machine has {count} CUDA "
                                            f"device(s)" + (", use cpu or auto" if not count
                                                            else ""))


def schedule_for(epochs: int | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The fields that ``--epochs N`` sets (the schedule scaled to N; none without it). With
    ``--set epochs=M`` too the two would disagree on the length, so that is refused."""
    if epochs is None:
        return {}
    if "epochs" in overrides:
        raise ConfigError("--set epochs", overrides["epochs"],
                          "not together with --epochs (--epochs N scales the whole schedule; "
                          "--set epochs=N changes the length alone)")
    return scaled_schedule(epochs)


def preset_config(preset: str, **overrides) -> TrialConfig:
    """The preset's values under any user overrides (None overrides are ignored)."""
    check_choice("preset", preset, PRESETS)
    values = {"preset": preset, **RUN_PRESETS[preset].values}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrialConfig.from_dict(values)


def merge_overrides(*layers: dict) -> dict[str, Any]:
    """Layers of field values merged in order, a later layer winning; None values are skipped
    (an option not given). Entry points pass their options, then the schedule of --epochs,
    then --set, so --set overrides any field, the options' too."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({key: value for key, value in layer.items() if value is not None})
    return merged


def parse_overrides(assignments: list[str] | None) -> dict[str, Any]:
    """``["epochs=4", "lambda_u=[0.1, 0.5]"]`` -> {"epochs": 4, "lambda_u": [0.1, 0.5]}.
    Values are read as JSON where they parse, as plain strings otherwise."""
    names = {f.name for f in dataclasses.fields(TrialConfig)}
    overrides: dict[str, Any] = {}
    for assignment in assignments or []:
        name, sep, text = assignment.partition("=")
        if not sep:
            raise ConfigError("--set", assignment, "FIELD=VALUE")
        if name not in names:
            raise ConfigError("--set field", name, sorted(names))
        try:
            overrides[name] = json.loads(text)
        except json.JSONDecodeError:
            overrides[name] = text
    return overrides


def __getattr__(name: str):
    """``DEFENSES`` (variant names in Table 4 order), ``VARIANTS`` (name -> flags) and
    ``AUGMENTS`` (augmentation names), read from their registries when asked for, so they
    include every entry registered by then (and torch is imported only for ``AUGMENTS``)."""
    if name == "DEFENSES":
        return tuple(variant_names())
    if name == "VARIANTS":
        return {variant: variant_flags(variant) for variant in variant_names()}
    if name == "AUGMENTS":
        from vb_sweep.mixing import AUGMENTATIONS

        return tuple(AUGMENTATIONS.names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
