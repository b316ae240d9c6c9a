"""The architecture registry: one module per family says how crossrank exports it.

A family module defines ``FAMILY = Family(...)``: which checkpoints it takes (cross-encoder
architectures, bi-encoder model types), the graph inputs, how a pair becomes ids ("segments": the
tokenizer's own pair template, ``[CLS] q [SEP] d [SEP]``; "prompt": a prompt template, see
``crossrank.export.prompts``), which head is spliced in ("classifier": the classifier's logits ->
one logit per pair; "yes-no": the last real token's hidden state . (W_yes - W_no)), which
onnxruntime fusion rules apply, which int8 recipes hold, and the family's fidelity bars. Adding a
family is adding one module here; every module of this package is read.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field

from crossrank.errors import InvalidArgumentError

from ..errors import SourceError

PAIR_BUILDING = ("segments", "prompt")
HEADS = ("classifier", "yes-no")
PER_ROW_RECIPES = ("dynamic-perrow-u8s8-perchannel-rr", "dynamic-perrow-u8s8-perchannel")


@dataclass(frozen=True)
class Family:
    name: str
    cross_architectures: tuple[str, ...]   # config.json "architectures"[0] exported as cross-encoders
    bi_model_types: tuple[str, ...]        # config.json "model_type" exported as bi-encoders
    inputs: tuple[str, ...]                # the graph inputs the family may take
    pairs: str                             # one of PAIR_BUILDING
    head: str                              # one of HEADS (cross-encoders; bi-encoders get the pooling head)
    fusion: str | None                     # onnxruntime.transformers optimizer model type; None: no fusions
    int8_recipes: tuple[str, ...]          # the int8 recipes that apply, the default first; empty: no int8
    bars: dict = field(default_factory=dict)  # (kind, precision) -> (metric, op, bar), over fidelity.BARS
    default_template: str | None = None    # "prompt" families: the template used without --template
    fusions_off: tuple[str, ...] = ()      # onnxruntime FusionOptions flags turned off (passes that cannot match)
    int8_keep_fp32: str = ""               # regex of node names every int8 recipe leaves in fp32 for this family
    precisions: tuple[str, ...] = ("fp32", "int8", "fp16")

    def check_precision(self, precision: str, int8_recipe: str | None) -> str | None:
        """The int8 recipe to use (None for other precisions); refuses what does not apply."""
        if precision not in self.precisions:
            raise InvalidArgumentError(f"--precision {precision!r} is not available for the {self.name} family "
                                       f"(available: {list(self.precisions)})")
        if precision != "int8":
            return None
        if not self.int8_recipes:
            raise InvalidArgumentError(f"int8 is not available for the {self.name} family")
        recipe = int8_recipe or self.int8_recipes[0]
        if recipe not in self.int8_recipes:
            raise InvalidArgumentError(f"--int8-recipe {recipe!r} does not apply to the {self.name} family; "
                                       f"it takes {list(self.int8_recipes)}")
        return recipe


class UnsupportedArchitecture(SourceError):
    """No family of the registry exports this checkpoint."""


def _load() -> dict[str, Family]:
    families = {}
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        family = importlib.import_module(f"{__name__}.{module.name}").FAMILY
        if family.pairs not in PAIR_BUILDING or family.head not in HEADS:
            raise ValueError(f"family {family.name!r}: pairs {family.pairs!r} / head {family.head!r} unknown")
        families[family.name] = family
    return families


FAMILIES: dict[str, Family] = _load()


def supported(kind: str) -> list[str]:
    """What ``kind`` accepts: architectures (cross) or model types (bi), sorted."""
    attr = "cross_architectures" if kind == "cross" else "bi_model_types"
    return sorted(name for family in FAMILIES.values() for name in getattr(family, attr))


def family_for(kind: str, architecture: str, model_type: str, where: str) -> Family:
    """The family exporting a checkpoint as ``kind``; else one line naming what is supported."""
    for family in FAMILIES.values():
        if (architecture in family.cross_architectures if kind == "cross" else model_type in family.bi_model_types):
            return family
    if kind == "cross":
        raise UnsupportedArchitecture(f"{where}: architecture {architecture or 'unknown'!r} is not supported as a "
                                      f"cross-encoder; supported: {supported('cross')}")
    raise UnsupportedArchitecture(f"{where}: model type {model_type or 'unknown'!r} is not supported as a bi-encoder; "
                                  f"supported: {supported('bi')}")


__all__ = ["FAMILIES", "Family", "PER_ROW_RECIPES", "UnsupportedArchitecture", "family_for", "supported"]
