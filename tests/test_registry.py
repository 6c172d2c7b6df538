"""One registry per kind of named component: every entry builds, and the CLI help and errors list the same names."""

from __future__ import annotations

import pytest

from conftest import invoke
from tipsprog.errors import InputError
from tipsprog.registry import ENCODERS, FUSION_MODEL_SECTIONS, FUSION_MODELS, SEGMENTATION_BACKENDS


@pytest.mark.parametrize("registry", [FUSION_MODELS, ENCODERS, SEGMENTATION_BACKENDS], ids=lambda r: r.kind)
def test_every_entry_resolves_and_unknown_names_are_one_line(registry):
    assert all(callable(registry.get(name)) for name in registry)
    with pytest.raises(InputError) as raised:
        registry.check("nonesuch", "--option")
    assert str(raised.value) == f"--option nonesuch: unknown {registry.kind}; choose one of {registry.choices()}"


def test_model_sections_are_registered_models_with_their_own_config_keys():
    from tipsprog.fusion.config import load_config

    config = load_config()
    assert set(FUSION_MODEL_SECTIONS) <= set(FUSION_MODELS)
    assert all(isinstance(getattr(config, name), dict) for name in FUSION_MODEL_SECTIONS)


@pytest.mark.parametrize(
    "command, registry", [("segment", SEGMENTATION_BACKENDS), ("embed", ENCODERS), ("fuse-train", FUSION_MODELS)]
)
def test_cli_help_lists_the_registry(command, registry):
    help_text = " ".join(invoke(command, "--help").output.replace("│", " ").split())
    assert all(name in help_text for name in registry)
