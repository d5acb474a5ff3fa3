"""The typed training settings: the schema's fields and defaults, errors that name the model and
key, and the settings dict model.pt and last.pt have always held."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from synapse_ei.config import model_defaults, SCHEMA
from synapse_ei.errors import DataError
from synapse_ei.learn import dataset, losses, transforms
from synapse_ei.learn.models import ARCHITECTURES, model_options, NORMS
from synapse_ei.learn.settings import TrainingSettings
from synapse_ei.learn.train import OPTIMIZERS

CONFIG = Path(__file__).resolve().parents[2] / "config" / "config.yaml"
#: Not settings: what the entry named, kept only for as_dict.
BOOKKEEPING = ("architecture", "named_build_keys")

#: The training settings of a bare entry as saved in model.pt before TrainingSettings existed
#: (the former DEFAULT_SETTINGS), in their order.
FORMER_DEFAULTS = {
    "epochs": 10, "batch_size": 32, "learning_rate": 1e-3, "weight_decay": 1e-4,
    "samples_per_epoch": None, "grad_clip": 1.0, "augment_strength": 1.0,
    "augmentations": ["flip", "rotate", "intensity", "noise"], "optimizer": "adamw",
    "warmup_epochs": 0, "loss": "cross_entropy", "focal_gamma": 2.0, "focal_alpha": None,
    "cb_beta": 0.999, "sampler": "random", "mixup": 0.0, "cutmix": 0.0, "ema_decay": None,
    "compile": False, "early_stopping_patience": None, "augment_on": "auto",
}
#: The demo config's image models, as the former resolve_settings saved them (entries as
#: written, and as Snakemake's validation fills them in: it adds the defaults after the keys
#: written, norm the only build key among them).
DEMO_SAVED = {
    "cnn2d": {**FORMER_DEFAULTS, "learning_rate": 0.002, "warmup_epochs": 1,
              "architecture": "cnn2d"},
    "r3d_18": {**FORMER_DEFAULTS, "epochs": 3, "batch_size": 16, "samples_per_epoch": 640,
               "architecture": "r3d_18"},
}
TYPES = {"integer": int, "number": float, "boolean": bool, "string": str, "array": tuple}


def entry_schema():
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    return schema["properties"]["models"]["additionalProperties"]["properties"]


def settings_fields():
    return [field for field in dataclasses.fields(TrainingSettings)
            if field.name not in BOOKKEEPING]


def test_fields_order_and_defaults_are_the_schemas():
    """One field per setting of a models entry (all but architecture), in the schema's order,
    each defaulting to the schema's default; a bare entry saves the former defaults."""
    defaults = {key: value for key, value in model_defaults().items() if key != "architecture"}
    fields = settings_fields()
    assert [field.name for field in fields] == list(defaults)
    bare = TrainingSettings.from_config({})
    for field in fields:
        expected = defaults[field.name]
        expected = tuple(expected) if isinstance(expected, list) else expected
        assert getattr(bare, field.name) == expected, field.name
        assert type(getattr(bare, field.name)) is type(expected) or expected == 0, field.name
    assert bare == TrainingSettings()
    assert list(TrainingSettings().as_dict().items()) == list(FORMER_DEFAULTS.items())
    assert [type(value) for value in TrainingSettings().as_dict().values()] == \
        [type(value) for value in FORMER_DEFAULTS.values()]


def test_field_types_are_the_schemas():
    """Each field's annotation is the schema's type (an enum is a string); optional where the
    schema allows null or has no default (a setting left out)."""
    schema = entry_schema()
    for field in settings_fields():
        spec = schema[field.name]
        kinds = spec.get("type", "string")
        kinds = [kinds] if isinstance(kinds, str) else kinds
        annotation = TYPES[next(kind for kind in kinds if kind != "null")].__name__
        optional = "null" in kinds or spec.get("default") is None
        assert field.type.split("[")[0].split(" ")[0] == annotation, field.name
        assert field.type.endswith("| None") == optional, field.name


@pytest.mark.parametrize(("key", "allowed"), [
    ("optimizer", OPTIMIZERS), ("loss", losses.LOSSES), ("sampler", dataset.SAMPLERS),
    ("augment_on", transforms.AUGMENT_ON), ("norm", NORMS),
])
def test_the_schemas_choices_are_what_the_package_implements(key, allowed):
    assert list(entry_schema()[key]["enum"]) == list(allowed)


def test_architectures_of_the_schema_are_the_registrys():
    assert entry_schema()["architecture"]["enum"] == list(ARCHITECTURES)


def test_unknown_key_names_the_model_and_key_and_suggests_the_nearest():
    with pytest.raises(DataError, match=r"models\.small: unknown setting 'batchsize'; did you "
                                        r"mean 'batch_size'\?"):
        TrainingSettings.from_config({"epochs": 3, "batchsize": 8}, where="models.small")


@pytest.mark.parametrize(("key", "value"), [
    ("epochs", "10"), ("epochs", 2.5), ("batch_size", True), ("learning_rate", "1e-3"),
    ("mixup", None), ("augmentations", "flip"), ("augmentations", ["flip", "spin"]),
    ("compile", "yes"), ("norm", "layer"), ("samples_per_epoch", 0), ("cb_beta", 1.0),
    ("gpus", 0), ("pretrained", ""),
])
def test_a_bad_type_or_value_names_the_model_and_key(key, value):
    with pytest.raises(DataError, match=rf"models\.small: setting '{key}' is "):
        TrainingSettings.from_config({key: value}, where="models.small")


@pytest.mark.parametrize(("entry", "named"), [
    ({"epochs": 2, "warmup_epochs": 2}, "'warmup_epochs' is 2; it must be below epochs"),
    ({"sampler": "balanced", "focal_alpha": 0.5}, "'focal_alpha' and 'sampler: balanced'"),
    ({"architecture": "cnn2d", "pretrained": "imagenet"},
     "'pretrained' is 'imagenet', but cnn2d has no pretrained weights"),
])
def test_settings_are_checked_together(entry, named):
    with pytest.raises(DataError, match=named):
        TrainingSettings.from_config(entry, where="models.small")


def test_none_leaves_a_setting_without_default_out():
    assert TrainingSettings.from_config({"samples_per_epoch": None}).samples_per_epoch is None
    with pytest.raises(DataError, match="setting 'epochs' is None"):
        TrainingSettings.from_config({"epochs": None})


def test_values_take_their_fields_types():
    settings = TrainingSettings.from_config({"epochs": 4.0, "mixup": 0, "focal_alpha": 1 / 3,
                                             "augmentations": ["blur"]})
    assert settings.epochs == 4 and type(settings.epochs) is int
    assert settings.mixup == 0.0 and type(settings.mixup) is float
    assert settings.augmentations == ("blur",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.epochs = 5


@pytest.mark.parametrize("validated", [False, True], ids=["as-written", "schema-filled"])
def test_demo_models_save_the_settings_of_before(validated):
    """model.pt's settings, the checkpoint fingerprint and a resume's comparison rest on
    as_dict: for the demo config's image models it is the former dict, key for key, in order;
    and reading that dict back gives the same settings."""
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    if validated:
        config = copy.deepcopy(config)
        validate(config, str(SCHEMA))
    for name, expected in DEMO_SAVED.items():
        entry = config["models"][name]
        settings = TrainingSettings.from_config(entry, where=f"models.{name}")
        if validated:
            expected = {**expected, "norm": "batch"}
        saved = settings.as_dict()
        assert list(saved.items()) == list(expected.items()), name
        assert [type(value) for value in saved.values()] == \
            [type(value) for value in expected.values()], name
        assert TrainingSettings.from_config(saved) == settings
        assert list(TrainingSettings.from_config(saved).as_dict().items()) == list(saved.items())


def test_as_dict_keeps_the_entrys_build_keys_in_its_order_and_gpus_only_above_one():
    entry = {"pretrained": "w.pth", "epochs": 2, "norm": "group", "architecture": "resnet18",
             "gpus": 2}
    saved = TrainingSettings.from_config(entry).as_dict()
    assert list(saved)[-4:] == ["pretrained", "norm", "architecture", "gpus"]
    assert saved["gpus"] == 2 and saved["norm"] == "group" and saved["pretrained"] == "w.pth"
    assert "gpus" not in TrainingSettings.from_config({**entry, "gpus": 1}).as_dict()


def test_model_options_read_the_build_settings():
    settings = TrainingSettings.from_config({"norm": "group", "pretrained": "w.pth"})
    assert model_options(settings) == {"norm": "group", "pretrained": "w.pth"}
    assert model_options(TrainingSettings()) == {"norm": "batch", "pretrained": None}
    # A model.pt's saved dict (which has norm only where the entry named it) builds the same.
    assert model_options(settings.as_dict()) == model_options(settings)
    assert model_options(TrainingSettings().as_dict()) == model_options(TrainingSettings())
