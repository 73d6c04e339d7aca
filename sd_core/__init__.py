"""sd_core: Stable Diffusion for 3D artists, independent of Blender.

The public API is small: build a ``GenerationRequest``, call ``Engine.generate``, read the ``Result``.
Heavy imports (torch, diffusers) happen when the engine is used, not when this package is imported,
so Blender can register the add-on instantly.
"""

from sd_core.errors import (
    CancelledError,
    ModelError,
    OutOfMemoryError,
    SDCoreError,
    UnsafeModelError,
    ValidationError,
)
from sd_core.request import (
    ControlSpec,
    EngineSettings,
    GeneratedImage,
    GenerationRequest,
    LoraSpec,
    Progress,
    Result,
)

__all__ = [
    "CancelledError",
    "ControlSpec",
    "EngineSettings",
    "GeneratedImage",
    "GenerationRequest",
    "LoraSpec",
    "ModelError",
    "OutOfMemoryError",
    "Progress",
    "Result",
    "SDCoreError",
    "UnsafeModelError",
    "ValidationError",
]
