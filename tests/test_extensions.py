"""The extension recipes, followed: a new attack, defense variant and augmentation, each
registered for one test only, is validated, built into a grid, ordered and run in a tiny trial
(test_trial.TINY); and every name that the presets and the findings use is registered."""

from __future__ import annotations

import json

import pytest
import torch

import vb_sweep.config as config_module
from vb_sweep.analysis.findings import CLAIMS
from test_trial import TINY
from vb_sweep.attacks import ATTACKS, Attack
from vb_sweep.cache import ArtifactCache
from vb_sweep.config import preset_config
from vb_sweep.errors import ConfigError
from vb_sweep.grid import GridOptions, build_grid, build_table_grid, longest_first
from vb_sweep.mixing import AUGMENTATIONS, Augmentation
from vb_sweep.presets import RUN_PRESETS
from vb_sweep.results import read_trials, write_trial
from vb_sweep.trial import run_trial
from vb_sweep.variants import DEFENSE_VARIANTS, DefenseVariant, VariantFlags

TINY_SETTINGS = [f"{field}={json.dumps(value)}" for field, value in TINY.items()]
NEW_ATTACK = "corner"
# SST that suppresses on the labeled images only: a combination Table 4 does not have.
NEW_VARIANT = DefenseVariant("F+AT+SST+SL", VariantFlags(filter=True, mix=True, sst=True,
                                                        suppress_labeled=True),
                             table_row=6, start_rank=4)
NEW_AUGMENT = "unmixed"


class CornerSquare(Attack):
    """A white square in the top-left corner; dirty-label."""

    name = NEW_ATTACK
    presets = {"vab_paper": {"size": 3}}

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        size = self.settings["size"]
        triggered = images.clone()
        triggered[:, :, :size, :size] = 255
        return triggered


@pytest.fixture
def new_attack():
    with ATTACKS.registered(NEW_ATTACK, CornerSquare):
        yield NEW_ATTACK
    assert NEW_ATTACK not in ATTACKS


@pytest.fixture
def new_variant():
    with DEFENSE_VARIANTS.registered(NEW_VARIANT.name, NEW_VARIANT):
        yield NEW_VARIANT.name
    assert NEW_VARIANT.name not in config_module.DEFENSES


@pytest.fixture
def new_augment():
    """An augmentation that mixes nothing and records the attention maps it was given."""
    attention_batches = []

    def unmixed(images, targets, attention, **_):
        attention_batches.append(None if attention is None else attention.shape[0])
        return images, targets

    augmentation = Augmentation(NEW_AUGMENT, needs_attention=True, mix=unmixed)
    with AUGMENTATIONS.registered(NEW_AUGMENT, augmentation):
        yield NEW_AUGMENT, attention_batches
    assert NEW_AUGMENT not in config_module.AUGMENTS


def run_only_cell(tmp_path, options: GridOptions):
    (config,) = build_grid(options)
    return config, run_trial(config, cache=ArtifactCache(tmp_path / "cache"), trial_id="new")


def test_a_new_attack_joins_grids_and_runs_a_trial(tmp_path, new_attack):
    configs = build_grid(GridOptions(attacks=["badnets", new_attack]))
    assert [c.attack for c in configs] == ["badnets", "badnets", new_attack, new_attack]
    _, result = run_only_cell(tmp_path, GridOptions(attacks=[new_attack], defenses=["vab"],
                                                    overrides=TINY_SETTINGS))
    assert result.row["attack"] == new_attack and result.row["num_poisoned"] == 12


def test_a_new_variant_is_ordered_tabulated_and_runs_a_trial(tmp_path, new_variant):
    assert config_module.DEFENSES[-1] == new_variant
    assert config_module.VARIANTS[new_variant] == NEW_VARIANT.flags
    configs = build_grid(GridOptions(defenses=["F", new_variant, "F+AT+SST+S"]))
    assert [c.defense for c in longest_first(configs)] == ["F+AT+SST+S", new_variant, "F"]
    assert new_variant in [c.defense for c in build_grid(GridOptions(preset="cpu"))]
    config, result = run_only_cell(tmp_path, GridOptions(defenses=[new_variant],
                                                         overrides=TINY_SETTINGS))
    assert [r["stage"] for r in result.history] == ["victim", "mix", "mix", "sst", "sst"]
    write_trial(tmp_path, result.row, result.history)
    frame = build_table_grid([config], ["new"], read_trials(tmp_path)).frame
    assert list(frame["defense"]) == [new_variant]
    assert frame["ba_mean"].iloc[0] == pytest.approx(result.row["ba"])


def test_a_new_augmentation_mixes_every_step_of_the_mix_stage(tmp_path, new_augment):
    name, attention_batches = new_augment
    assert config_module.AUGMENTS[-1] == name
    _, result = run_only_cell(tmp_path, GridOptions(defenses=["F+AT"],
                                                    overrides=[f"augment={name}",
                                                               *TINY_SETTINGS]))
    assert result.row["augment"] == name
    mix_epochs = [r for r in result.history if r["stage"] == "mix"]
    assert len(attention_batches) >= len(mix_epochs) == 4
    assert None not in attention_batches  # it asked for the attention maps and got them


def test_names_are_refused_once_unregistered():
    for field, name in (("attack", NEW_ATTACK), ("defense", NEW_VARIANT.name),
                        ("augment", NEW_AUGMENT)):
        with pytest.raises(ConfigError, match=f"invalid {field}"):
            preset_config("smoke", **{field: name}).validate()


def test_presets_and_findings_name_registered_entries():
    for preset in RUN_PRESETS.values():
        assert set(preset.attacks or ()) <= set(ATTACKS.names())
        assert set(preset.defenses or ()) <= set(config_module.DEFENSES)
        assert set(preset.attack_budgets) <= set(ATTACKS.names())
    assert {name for claim in CLAIMS for name in claim.variants} <= set(config_module.DEFENSES)
