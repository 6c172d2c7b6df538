"""fuse-train configuration: YAML validated at load against the packaged defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

import yaml

from tipsprog.errors import InputError
from tipsprog.fusion.models import MODELS


@dataclass(frozen=True)
class TrainConfig:
    """All fuse-train settings."""

    model: str
    hidden: int
    dropout: float
    learning_rate: float
    weight_decay: float
    max_epochs: int
    patience: int
    validation_fraction: float
    loss_weights: dict
    folds: int
    seeds: int
    horizons_days: list
    imaging_components: int
    clinical_cox_penalizer: float


LOSS_KEYS = {"survival", "ohe", "ppg"}


def _defaults() -> dict:
    return yaml.safe_load(resources.files("tipsprog").joinpath("configs/default.yaml").read_text(encoding="utf-8"))


def _check(values: dict, source: str) -> None:
    """Type and range checks with a message naming the file and key."""
    types = {f.name: f.type for f in fields(TrainConfig)}
    for key, value in values.items():
        expected = {"int": int, "float": (int, float), "str": str, "dict": dict, "list": list}[types[key]]
        if not isinstance(value, expected) or isinstance(value, bool):
            raise InputError(f"{source}: '{key}' must be {types[key]}, got {value!r}")
    if values["model"] not in MODELS:
        raise InputError(f"{source}: model '{values['model']}' unknown (choose from {', '.join(MODELS)})")
    if set(values["loss_weights"]) - LOSS_KEYS:
        raise InputError(f"{source}: loss_weights keys must be among {sorted(LOSS_KEYS)}")
    if values["folds"] < 2 or values["seeds"] < 1 or not 0 < values["validation_fraction"] < 0.5:
        raise InputError(f"{source}: need folds ≥ 2, seeds ≥ 1 and 0 < validation_fraction < 0.5")


def load_config(path: Path | None = None, **overrides) -> TrainConfig:
    """Defaults, then the YAML file, then command-line overrides (None values ignored)."""
    values = _defaults()
    source = "default config"
    if path is not None:
        source = str(path)
        if not Path(path).is_file():
            raise InputError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise InputError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise InputError(f"{path}: config must be a mapping of keys to values")
        unknown = sorted(set(loaded) - set(values))
        if unknown:
            raise InputError(f"{path}: unknown config key '{unknown[0]}' (known: {', '.join(sorted(values))})")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["loss_weights"] = {**_defaults()["loss_weights"], **values["loss_weights"]}
    _check(values, source)
    return TrainConfig(**values)
