"""Shared test set-up: offline, Blender's user folder kept out of home, and the tiny models."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before any import of huggingface_hub/diffusers: a stray hub call must fail at once, not hang.
os.environ["HF_HUB_OFFLINE"] = "1"
# Before any import of triton: its kernels are tested on CPU tensors through Triton's interpreter, a mode that
# must be chosen before triton's own library functions are defined.
os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="blender-user-"))

TINY_MODEL_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "tiny-models"


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    """Paths of every tiny fixture: diffusers folders, ControlNets and single ``.safetensors`` files.

    Keys: sd1, sd1_inpaint, sdxl, sd1_controlnet, sdxl_controlnet, and each with ``_single`` for its
    A1111-layout single file. Built once, cached on disk, rebuilt when ``BUILDER_VERSION`` changes.
    """
    from sd_core.testing.tiny_models import build_all

    return build_all(TINY_MODEL_CACHE)
