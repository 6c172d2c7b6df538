"""fuse-train configuration: YAML validated at load against the packaged defaults (and the model's preset)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from tipsprog.errors import InputError
from tipsprog.registry import FUSION_MODEL_SECTIONS, FUSION_MODELS

LOSS_KEYS = ("survival", "ohe", "ppg")
STAGE_TYPES = {"name": str, "max_epochs": int, "patience": int, "loss_weights": dict, "shared_lr_scale": float}


@dataclass(frozen=True)
class TrainConfig:
    """All fuse-train settings."""

    model: str
    hidden: int
    dropout: float
    learning_rate: float
    weight_decay: float
    validation_fraction: float
    folds: int
    seeds: int
    repeats: int
    imaging_width: int
    horizons_days: list
    clinical_cox_penalizer: float
    clinical_offset: bool
    stages: list
    tmiclnet: dict
    multitips: dict
    graph: dict

    def model_options(self) -> dict:
        """The config section of the chosen model (empty for models without one)."""
        return dict(getattr(self, self.model)) if self.model in FUSION_MODEL_SECTIONS else {}


def _packaged(name: str) -> dict | None:
    """A packaged YAML file under tipsprog/configs, or None."""
    file = resources.files("tipsprog").joinpath(f"configs/{name}.yaml")
    return yaml.safe_load(file.read_text(encoding="utf-8")) if file.is_file() else None


def _read(path: Path) -> dict:
    """A user YAML mapping, with one-line errors for a missing file or bad YAML."""
    if not Path(path).is_file():
        raise InputError(f"{path}: config file not found")
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise InputError(f"{path}: config must be a mapping of keys to values")
    return loaded


def _same_type(value, default, where: str, source: str) -> None:
    """A value must have its default's type (an int is accepted for a float)."""
    expected = (int, float) if isinstance(default, float) else type(default)
    if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
        raise InputError(f"{source}: '{where}' must be {type(default).__name__}, got {value!r}")


def _check_section(values: dict, defaults: dict, where: str, source: str) -> None:
    """Known keys only, each of its default's type."""
    if not isinstance(values, dict):
        raise InputError(f"{source}: '{where}' must be a mapping")
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise InputError(f"{source}: unknown key '{where}.{unknown[0]}' (known: {', '.join(sorted(defaults))})")
    for key, value in values.items():
        _same_type(value, defaults[key], f"{where}.{key}", source)


def _check_stages(stages, source: str) -> None:
    """A non-empty list of stages with every key, positive epochs and non-negative loss weights."""
    if not isinstance(stages, list) or not stages:
        raise InputError(f"{source}: 'stages' must be a non-empty list")
    for number, stage in enumerate(stages, 1):
        where = f"stages[{number}]"
        if not isinstance(stage, dict) or set(stage) != set(STAGE_TYPES):
            raise InputError(f"{source}: {where} needs exactly the keys {', '.join(STAGE_TYPES)}")
        for key, kind in STAGE_TYPES.items():
            _same_type(stage[key], kind(), f"{where}.{key}", source)
        _check_section(stage["loss_weights"], dict.fromkeys(LOSS_KEYS, 0.0), f"{where}.loss_weights", source)
        if stage["max_epochs"] < 1 or stage["patience"] < 1 or stage["shared_lr_scale"] < 0:
            raise InputError(f"{source}: {where} needs max_epochs ≥ 1, patience ≥ 1 and shared_lr_scale ≥ 0")
        if any(w < 0 for w in stage["loss_weights"].values()):
            raise InputError(f"{source}: {where}.loss_weights must not be negative")


def _check(values: dict, defaults: dict, source: str) -> None:
    """Type and range checks with a message naming the file and key."""
    for key, value in values.items():
        if key in FUSION_MODEL_SECTIONS:
            _check_section(value, defaults[key], key, source)
        elif key != "stages":
            _same_type(value, defaults[key], key, source)
    _check_stages(values["stages"], source)
    FUSION_MODELS.check(values["model"], f"{source}: model")
    if values["folds"] < 2 or values["seeds"] < 1 or values["repeats"] < 1 or not 0 < values["validation_fraction"] < 0.5:
        raise InputError(f"{source}: need folds ≥ 2, seeds ≥ 1, repeats ≥ 1 and 0 < validation_fraction < 0.5")
    if values["hidden"] % values["tmiclnet"]["heads"] or values["hidden"] % values["multitips"]["heads"]:
        raise InputError(f"{source}: 'hidden' must be divisible by the attention heads of tmiclnet and multitips")


def load_config(path: Path | None = None, **overrides) -> TrainConfig:
    """Defaults, the model's preset, then the YAML file, then command-line overrides (None values ignored)."""
    defaults = _packaged("default")
    assert defaults is not None, "tipsprog/configs/default.yaml is missing from the installation"
    loaded = _read(path) if path is not None else {}
    source = str(path) if path is not None else "default config"
    unknown = sorted(set(loaded) - set(defaults))
    if unknown:
        raise InputError(f"{path}: unknown config key '{unknown[0]}' (known: {', '.join(sorted(defaults))})")
    given = {k: v for k, v in overrides.items() if v is not None}
    model = given.get("model", loaded.get("model", defaults["model"]))
    preset = _packaged(model) if model in FUSION_MODELS else None
    values = {**defaults, **(preset or {})}
    for key, value in {**loaded, **given}.items():
        values[key] = {**defaults[key], **value} if key in FUSION_MODEL_SECTIONS and isinstance(value, dict) else value
    _check(values, defaults, source)
    values["stages"] = [
        {**stage, "loss_weights": {**dict.fromkeys(LOSS_KEYS, 0.0), **stage["loss_weights"]}} for stage in values["stages"]
    ]  # a task left out of a stage's loss_weights is not trained there
    return TrainConfig(**values)
