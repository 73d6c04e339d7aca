"""Load Stable Diffusion pipelines and ControlNets once and keep them: the engine's model contract.

Why: loading takes seconds to minutes, so every model is loaded once per source and reused; single files
load offline through an effective config folder (bundled config + sizes read from the tensors); pickled
checkpoints are never unpickled unless the artist allowed it.
"""

from __future__ import annotations

import gc
import hashlib
import json
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sd_core.device import Placement, resolve_placement
from sd_core.errors import ModelError
from sd_core.models.bundled import Configs, write_config_folder
from sd_core.models.detect import (
    CheckpointInfo,
    Family,
    Prediction,
    Shapes,
    Variant,
    detect_from_shapes,
    read_safetensors_header,
)
from sd_core.models.infer import controlnet_configs, pipeline_configs
from sd_core.models.sources import ResolvedSource, SourceKind, Want, resolve_source
from sd_core.request import EngineSettings

if TYPE_CHECKING:
    from diffusers import ControlNetModel, DiffusionPipeline


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded, for the UI and the image metadata."""

    source: str
    name: str
    kind: SourceKind
    family: Family
    variant: Variant
    prediction: Prediction
    hash: str | None


_HASHES: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def short_hash(path: Path) -> str:
    """A1111's short model hash: the first 10 hex digits of the file's SHA-256, cached by path, size and mtime."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASHES:
            return _HASHES[key]
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()[:10]
    with _HASH_LOCK:
        _HASHES[key] = digest
    return digest


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"'{path}' could not be read as JSON: the model folder is damaged.") from error


def _folder_kind(folder: Path) -> Want:
    if (folder / "model_index.json").is_file():
        return "pipeline"
    config = folder / "config.json"
    if config.is_file() and _read_json(config).get("_class_name") == "ControlNetModel":
        return "controlnet"
    raise ModelError(
        f"'{folder.name}' is neither a diffusers model folder (no model_index.json) nor a ControlNet folder."
    )


def _folder_info(folder: Path) -> CheckpointInfo:
    """Family, variant and prediction of a diffusers pipeline folder, from its configs."""
    index = _read_json(folder / "model_index.json")
    unet_config_path = folder / "unet" / "config.json"
    unet = _read_json(unet_config_path) if unet_config_path.is_file() else {}
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    scheduler = _read_json(scheduler_path) if scheduler_path.is_file() else {}
    class_name = str(index.get("_class_name", ""))
    if "XL" in class_name or "text_encoder_2" in index or unet.get("addition_embed_type") == "text_time":
        family: Family = "sdxl"
    elif unet.get("cross_attention_dim") == 1024:
        family = "sd2"
    elif class_name.startswith("StableDiffusion"):
        family = "sd1"
    else:
        raise ModelError(
            f"'{folder.name}' is a {class_name or 'diffusers'} model, not a Stable Diffusion 1.x/2.x/XL one."
        )
    in_channels = unet.get("in_channels", 4)
    if in_channels not in (4, 9):
        raise ModelError(f"'{folder.name}' has a UNet with {in_channels} input channels: only 4 or 9 are supported.")
    prediction: Prediction = "v_prediction" if scheduler.get("prediction_type") == "v_prediction" else "epsilon"
    return CheckpointInfo(family, "inpaint" if in_channels == 9 else "base", prediction, "pipeline")


def _fp16_only(folder: Path) -> bool:
    """True when a diffusers folder has only ``.fp16`` weights, so diffusers must be asked for that variant."""
    weights = [path.name for path in folder.glob("*.safetensors")] + [path.name for path in folder.glob("*.bin")]
    return bool(weights) and all(".fp16." in name for name in weights)


@dataclass(frozen=True)
class SafetensorsFile:
    """A checkpoint ready for ``from_single_file``: where it is, what it is, and its tensor shapes."""

    path: Path
    info: CheckpointInfo
    shapes: Shapes


def _pipeline_class(info: CheckpointInfo) -> tuple[type[DiffusionPipeline], dict[str, Any]]:
    """The txt2img pipeline class of the family, and the kwargs that keep unused parts unloaded."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if info.family == "sdxl":
        return StableDiffusionXLPipeline, {"feature_extractor": None}
    # safety_checker=None is needed even with load_safety_checker=False (a diffusers quirk).
    no_checker = {"feature_extractor": None, "safety_checker": None, "requires_safety_checker": False}
    return StableDiffusionPipeline, no_checker


@contextmanager
def _loading_errors(name: str, what: str) -> Iterator[None]:
    """Report a library failure while loading as one artist-readable ``ModelError``."""
    try:
        yield
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise ModelError(f"'{name}' could not be loaded as {what}: {error}") from error


def _wrong_kind(name: str, found: Want, expected: Want) -> ModelError:
    what = {"pipeline": "a Stable Diffusion model", "controlnet": "a ControlNet"}
    return ModelError(f"'{name}' is {what[found]}, but {what[expected]} is expected here.")


class ModelCache:
    """Loaded pipelines and ControlNets, keyed by the source string they were asked for."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.placement: Placement = resolve_placement(settings.device, settings.dtype)
        self._pipelines: dict[str, tuple[DiffusionPipeline, ModelInfo]] = {}
        self._controlnets: dict[str, ControlNetModel] = {}
        self._work_dir = tempfile.TemporaryDirectory(prefix="sd_core-models-", ignore_cleanup_errors=True)

    def base_pipeline(self, source: str) -> tuple[DiffusionPipeline, ModelInfo]:
        """A txt2img pipeline (SD or SDXL, safety checker off) on the engine's device, loaded once per source."""
        if source not in self._pipelines:
            pipeline, info = self._load_pipeline(source)
            if not self.settings.cpu_offload:
                pipeline.to(self.placement.device)
            self._pipelines[source] = (pipeline, info)
        return self._pipelines[source]

    def controlnet(self, source: str) -> ControlNetModel:
        """A ControlNet on the engine's device and dtype, loaded once per source."""
        if source not in self._controlnets:
            controlnet = self._load_controlnet(source)
            if not self.settings.cpu_offload:
                controlnet.to(self.placement.device)
            self._controlnets[source] = controlnet
        return self._controlnets[source]

    def unload(self) -> None:
        """Forget every loaded model and give the memory back."""
        self._pipelines.clear()
        self._controlnets.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # Loading -------------------------------------------------------------------------------------------------

    def _config_folder(self, configs: Configs) -> Path:
        """Write ``configs`` once per distinct content and return the folder."""
        key = hashlib.sha256(json.dumps(configs, sort_keys=True).encode()).hexdigest()[:16]
        folder = Path(self._work_dir.name) / "configs" / key
        if not folder.is_dir():
            write_config_folder(configs, folder)
        return folder

    @contextmanager
    def _safetensors_of(self, resolved: ResolvedSource) -> Iterator[SafetensorsFile]:
        """The ``.safetensors`` to load and its header; an allowed pickle is converted for the load, then deleted."""
        path = self._unpickle_to_safetensors(resolved.path) if resolved.is_pickle else resolved.path
        try:
            header = read_safetensors_header(path)
            info = detect_from_shapes(header.shapes, header.metadata, f"'{resolved.path.name}'")
            yield SafetensorsFile(path, info, header.shapes)
        finally:
            if resolved.is_pickle:
                with suppress(OSError):  # Windows keeps memory-mapped files open; the work dir goes later
                    path.unlink()

    def _unpickle_to_safetensors(self, path: Path) -> Path:
        """Unpickle an allowed ``.ckpt`` and rewrite its tensors as ``.safetensors``, so one loading path remains."""
        from safetensors.torch import save_file

        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # arbitrary pickled code may raise anything
            raise ModelError(f"'{path.name}' could not be read as a PyTorch checkpoint: {error}") from error
        while isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
            checkpoint = checkpoint["state_dict"]
        if not isinstance(checkpoint, dict):
            raise ModelError(f"'{path.name}' does not contain a state dict: it is not a model checkpoint.")
        tensors = {str(key): value.contiguous() for key, value in checkpoint.items() if isinstance(value, torch.Tensor)}
        target = Path(self._work_dir.name) / "unpickled" / f"{path.stem}-{short_hash(path)}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(target))
        return target

    def _load_pipeline(self, source: str) -> tuple[DiffusionPipeline, ModelInfo]:
        resolved = resolve_source(source, self.settings, "pipeline")
        dtype = self.placement.dtype
        file_hash = None
        if resolved.kind == "single_file":
            with self._safetensors_of(resolved) as checkpoint:
                info = checkpoint.info
                if info.kind != "pipeline":
                    raise _wrong_kind(resolved.path.name, info.kind, "pipeline")
                config = self._config_folder(pipeline_configs(checkpoint.shapes, info))
                pipeline_class, extra = _pipeline_class(info)
                with _loading_errors(resolved.name, f"an {info.family.upper()} model"):
                    pipeline = pipeline_class.from_single_file(
                        str(checkpoint.path), config=str(config), local_files_only=True, dtype=dtype, **extra
                    )
            file_hash = short_hash(resolved.path)
        else:
            if _folder_kind(resolved.path) != "pipeline":
                raise _wrong_kind(resolved.name, "controlnet", "pipeline")
            info = _folder_info(resolved.path)
            pipeline_class, extra = _pipeline_class(info)
            variant = "fp16" if _fp16_only(resolved.path / "unet") else None
            with _loading_errors(resolved.name, f"an {info.family.upper()} model"):
                pipeline = pipeline_class.from_pretrained(
                    resolved.path, dtype=dtype, variant=variant, local_files_only=True, **extra
                )
        model_info = ModelInfo(
            source, resolved.name, resolved.kind, info.family, info.variant, info.prediction, file_hash
        )
        return pipeline, model_info

    def _load_controlnet(self, source: str) -> ControlNetModel:
        from diffusers import ControlNetModel

        resolved = resolve_source(source, self.settings, "controlnet")
        dtype = self.placement.dtype
        if resolved.kind == "single_file":
            with self._safetensors_of(resolved) as checkpoint:
                if checkpoint.info.kind != "controlnet":
                    raise _wrong_kind(resolved.path.name, checkpoint.info.kind, "controlnet")
                config = self._config_folder(controlnet_configs(checkpoint.shapes, checkpoint.info))
                with _loading_errors(resolved.name, "a ControlNet"):
                    return ControlNetModel.from_single_file(
                        str(checkpoint.path), config=str(config), local_files_only=True, dtype=dtype
                    )
        if _folder_kind(resolved.path) != "controlnet":
            raise _wrong_kind(resolved.name, "pipeline", "controlnet")
        variant = "fp16" if _fp16_only(resolved.path) else None
        with _loading_errors(resolved.name, "a ControlNet"):
            return ControlNetModel.from_pretrained(resolved.path, dtype=dtype, variant=variant, local_files_only=True)
