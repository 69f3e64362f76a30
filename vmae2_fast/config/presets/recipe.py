"""What a preset is: one official recipe (a launch script of OpenGVLab/VideoMAEv2, or a table of the
paper where no script exists) per model size it covers.

A preset is called with the model name and returns the config overrides. A size the recipe does
not cover is refused with the sizes that exist; the user may then borrow one explicitly with
`--preset-model SIZE` (the one documented rule: the values of another size, unchanged).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import ConfigError


class NoRecipeError(ConfigError):
    """No official recipe for this (stage, preset, model); the message lists the ones that exist."""


def canonical_model(name: str) -> str:
    from ...models.zoo import ALIASES
    return ALIASES.get(name, name)


@dataclass
class Recipe:
    stage: str
    name: str
    summary: str                         # one line for --help and the README table
    common: dict                         # values every covered size shares
    per_model: dict                      # size -> (source, values of that size)
    notes: dict = field(default_factory=dict)   # size -> where the paper differs from the script

    def sources(self) -> dict:
        return {m: src for m, (src, _) in self.per_model.items()}

    def __call__(self, model: str) -> dict:
        key = canonical_model(model)
        if key not in self.per_model:
            covered = ", ".join(self.per_model)
            raise NoRecipeError(
                f"no official {self.stage} recipe {self.name!r} for {model}: the official scripts "
                f"and the paper give it for {covered} only. Pass --preset-model SIZE to use the "
                f"values of one of those sizes as they are (e.g. --preset-model "
                f"{next(iter(self.per_model))}), --preset none for the plain defaults, or another "
                "--preset")
        return {**self.common, **self.per_model[key][1]}


@dataclass
class Ambiguous:
    """A bare name that stands for two recipes (fine-tuning from stage 1 or after stage 2)."""
    name: str
    message: str

    def __call__(self, model: str) -> dict:
        raise NoRecipeError(self.message)
