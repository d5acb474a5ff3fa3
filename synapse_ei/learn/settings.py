"""A model's training settings as one typed, validated object.

:class:`TrainingSettings` holds one field per setting of a ``models`` entry of the config (all but
``architecture``, which the trainer takes as its own argument), in the schema's order. The schema
(``workflow/schemas/config.schema.yaml``) stays the one place for defaults and rules: each field's
default is read from it (:func:`synapse_ei.config.model_defaults`), and :meth:`from_config`
validates an entry against the schema's own ``models`` entry (unknown keys, types, enums and
ranges), then checks what a schema cannot say (``warmup_epochs`` below ``epochs``, one way to
balance the classes). The fields are explicit, not generated, so a reader and a type checker see
what a function may read; ``tests/learn/test_settings.py`` keeps their names and order the schema's.

:meth:`TrainingSettings.as_dict` is the settings dict ``model.pt``, ``last.pt`` and the checkpoint
fingerprint have always held, key for key and in order, so models and checkpoints written before
this class existed still resume and compare equal.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import yaml

from synapse_ei.config import model_defaults, SCHEMA
from synapse_ei.errors import DataError

_DEFAULTS = model_defaults()
#: What the model build reads (:func:`synapse_ei.learn.models.model_options`), not training.
BUILD_KEYS = ("architecture", "norm", "pretrained")
#: How many processes train the model (one per GPU): in the settings dict only when above 1, so a
#: one-process run's settings, checkpoints and model.pt are those of before the key existed.
LAUNCH_KEYS = ("gpus",)


@functools.cache
def _entry_schema() -> dict[str, Any]:
    """The schema of a ``models`` entry, ``architecture`` not required (the trainer's argument)."""
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    entry = dict(schema["properties"]["models"]["additionalProperties"])
    entry.pop("required", None)
    return entry


@dataclass(frozen=True)
class TrainingSettings:
    """One model's settings; build it with :meth:`from_config` (validated), not directly."""

    norm: str = _DEFAULTS["norm"]
    pretrained: str | None = _DEFAULTS["pretrained"]
    epochs: int = _DEFAULTS["epochs"]
    batch_size: int = _DEFAULTS["batch_size"]
    learning_rate: float = _DEFAULTS["learning_rate"]
    weight_decay: float = _DEFAULTS["weight_decay"]
    samples_per_epoch: int | None = _DEFAULTS["samples_per_epoch"]
    grad_clip: float = _DEFAULTS["grad_clip"]
    augment_strength: float = _DEFAULTS["augment_strength"]
    augmentations: tuple[str, ...] = tuple(_DEFAULTS["augmentations"])
    optimizer: str = _DEFAULTS["optimizer"]
    warmup_epochs: int = _DEFAULTS["warmup_epochs"]
    loss: str = _DEFAULTS["loss"]
    focal_gamma: float = _DEFAULTS["focal_gamma"]
    focal_alpha: float | None = _DEFAULTS["focal_alpha"]
    cb_beta: float = _DEFAULTS["cb_beta"]
    sampler: str = _DEFAULTS["sampler"]
    mixup: float = float(_DEFAULTS["mixup"])
    cutmix: float = float(_DEFAULTS["cutmix"])
    ema_decay: float | None = _DEFAULTS["ema_decay"]
    compile: bool = _DEFAULTS["compile"]
    gpus: int = _DEFAULTS["gpus"]
    early_stopping_patience: int | None = _DEFAULTS["early_stopping_patience"]
    augment_on: str = _DEFAULTS["augment_on"]
    # Not settings: what the entry itself named, only so that as_dict() is the dict saved before
    # this class existed (which has the entry's own build keys after the training ones).
    architecture: str | None = dataclasses.field(default=None, repr=False)
    named_build_keys: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    @classmethod
    def from_config(cls, entry: Mapping[str, Any] | None,
                    where: str = "models") -> TrainingSettings:
        """The settings of a ``models`` entry (plain values; missing keys take the schema's
        defaults). ``where`` names the entry in errors, e.g. ``models.cnn2d``.

        :class:`DataError` for an unknown key, a wrong type or value, ``warmup_epochs`` not
        below ``epochs``, or ``focal_alpha`` with the balanced sampler.
        """
        entry = {str(key): value for key, value in dict(entry or {}).items()}
        known = set(_DEFAULTS)
        for key in entry:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise DataError(f"{where}: unknown setting '{key}'; {hint}a model's settings "
                                f"are {sorted(known)}.")
        # None for a setting without a default is the setting left out (as saved in model.pt).
        checked = {key: value for key, value in entry.items()
                   if value is not None or "default" in _entry_schema()["properties"][key]}
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(_entry_schema()).iter_errors(checked))
        if error is not None:
            key = next((str(part) for part in error.absolute_path), None)
            if key is None and "pretrained" in entry:  # the schema's if/then on architecture
                raise DataError(f"{where}: setting 'pretrained' is {entry['pretrained']!r}, but "
                                f"{entry.get('architecture')} has no pretrained weights; leave "
                                "it out.")
            named = (f"setting '{key}' is {entry[key]!r}" if key is not None
                     else "the settings")
            raise DataError(f"{where}: {named}: {error.message}. See the models settings in "
                            "config/README.md.")
        values = {field.name: _typed(field.type, entry[field.name])
                  for field in dataclasses.fields(cls)
                  if field.name in entry and field.name != "architecture"}
        settings = cls(**values, architecture=entry.get("architecture"),
                       named_build_keys=tuple(key for key in entry if key in BUILD_KEYS))
        settings._check(where)
        return settings

    def _check(self, where: str) -> None:
        """What the schema cannot check: relations between settings."""
        if self.warmup_epochs >= self.epochs:
            raise DataError(f"{where}: setting 'warmup_epochs' is {self.warmup_epochs}; it must "
                            f"be below epochs ({self.epochs}).")
        if self.sampler == "balanced" and self.focal_alpha is not None:
            raise DataError(f"{where}: 'focal_alpha' and 'sampler: balanced' both balance the "
                            "classes; set one of them (leave focal_alpha out with the balanced "
                            "sampler).")

    def as_dict(self) -> dict[str, Any]:
        """The settings as saved in model.pt, last.pt and the checkpoint fingerprint: the training
        settings in the schema's order, then the build keys the entry named (in its order), then
        ``gpus`` when above 1."""
        saved: dict[str, Any] = {
            field.name: getattr(self, field.name) for field in dataclasses.fields(self)
            if field.name in _DEFAULTS and field.name not in BUILD_KEYS + LAUNCH_KEYS
        }
        saved["augmentations"] = list(self.augmentations)
        for key in self.named_build_keys:
            saved[key] = getattr(self, key)
        if self.gpus != 1:
            saved["gpus"] = self.gpus
        return saved


def _typed(annotation: str, value: Any) -> Any:
    """A schema-valid value as its field's type: a number as float (YAML's ``0`` for ``0.0``),
    a whole float as int (what JSON Schema's integer allows), a list as a tuple."""
    if value is None:
        return None
    if annotation.startswith("float"):
        return float(value)
    if annotation.startswith("int"):
        return int(value)
    if annotation.startswith("tuple"):
        return tuple(str(item) for item in value)
    return value
