"""The defense variants (the paper's Table 4 rows) behind a registry, one entry per variant.

A variant is its name (``--defense NAME``), the components of V&B it turns on, its row in the
Table 4 order that every table and list of variants follows, and its start rank: a grid starts
its trials lowest rank first (``grid.longest_first``). Adding a variant = one
``register_variant`` line below, plus a stage in ``vb_sweep/defense.py`` (``stage_of``,
``train_one_epoch``) if it needs a new kind of epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

from vb_sweep.registry import Registry


@dataclass(frozen=True)
class VariantFlags:
    """Which components of V&B a defense variant turns on."""

    filter: bool = False
    mix: bool = False      # the mixing augmentation (AttentionMix or a baseline) on Dc
    sst: bool = False      # semi-supervised training on Dc (labeled) + Ds (unlabeled)
    suppress_unlabeled: bool = False
    suppress_labeled: bool = False


@dataclass(frozen=True)
class DefenseVariant:
    name: str
    flags: VariantFlags
    table_row: int         # its place in the Table 4 order
    start_rank: int        # trials start lowest rank first; ties keep the grid's order


DEFENSE_VARIANTS = Registry[DefenseVariant]("defense")


def register_variant(variant: DefenseVariant) -> DefenseVariant:
    return DEFENSE_VARIANTS.register(variant.name)(variant)


def variant_names() -> list[str]:
    """Every registered variant, in Table 4 order."""
    return sorted(DEFENSE_VARIANTS.names(), key=lambda name: DEFENSE_VARIANTS.get(name).table_row)


def variant_flags(name: str) -> VariantFlags:
    return DEFENSE_VARIANTS.get(name).flags


def start_rank(name: str) -> int:
    return DEFENSE_VARIANTS.get(name).start_rank


# Longest first, so that a short trial runs alone at the end of a grid. On the cpu preset, mix
# stage shared: F+AT+SST+S, F+AT+SST ~2,050 s, none 2,000, vab 1,550, F+AT 1,320, F 1,240.
register_variant(DefenseVariant("none", VariantFlags(), table_row=0, start_rank=2))
register_variant(DefenseVariant("F", VariantFlags(filter=True), table_row=1, start_rank=5))
register_variant(DefenseVariant("F+AT", VariantFlags(filter=True, mix=True),
                                table_row=2, start_rank=4))
register_variant(DefenseVariant("F+AT+SST", VariantFlags(filter=True, mix=True, sst=True),
                                table_row=3, start_rank=1))
register_variant(DefenseVariant("F+AT+SST+S", VariantFlags(filter=True, mix=True, sst=True,
                                                           suppress_unlabeled=True),
                                table_row=4, start_rank=0))
register_variant(DefenseVariant("vab", VariantFlags(filter=True, mix=True, sst=True,
                                                    suppress_unlabeled=True,
                                                    suppress_labeled=True),
                                table_row=5, start_rank=3))
