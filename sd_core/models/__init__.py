"""Finding, recognising and loading Stable Diffusion models: hub ids, diffusers folders and single files."""

from sd_core.models.cache import ModelCache, ModelInfo, short_hash
from sd_core.models.detect import CheckpointInfo, detect_checkpoint

__all__ = ["CheckpointInfo", "ModelCache", "ModelInfo", "detect_checkpoint", "short_hash"]
