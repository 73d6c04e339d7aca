"""Tiny offline models, built once per test run and cached on disk between runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from sd_core.testing.tiny_models import build_all

TINY_MODEL_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "tiny-models"


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    """Paths of every tiny fixture: diffusers folders, ControlNets and single ``.safetensors`` files.

    Keys: sd1, sd1_inpaint, sdxl, sd1_controlnet, sdxl_controlnet, and each with ``_single`` for its
    A1111-layout single file. Rebuilt automatically when ``BUILDER_VERSION`` changes.
    """
    return build_all(TINY_MODEL_CACHE)
