"""The engine: one ``GenerationRequest`` in, one ``Result`` out, through stock diffusers pipelines.

Weights come from ``ModelCache`` (loaded once, shared by every mode); the mode-specific pipeline is
a ``from_pipe`` view over the same modules, so switching between img2img, inpaint and ControlNet
never reloads anything. The engine adds what artists need around diffusers: any image size, exact
pixels outside the inpaint mask, seamless tiling, per-step progress with a cheap preview, cancel
within one step, metadata, and errors an artist can read.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sd_core import images
from sd_core.acceleration import make_accelerator
from sd_core.encode_ahead import encode_ahead
from sd_core.errors import CancelledError, ModelError, OutOfMemoryError
from sd_core.lora import LoraMerger, check_lora_file, lora_name
from sd_core.memory import check_fits
from sd_core.models import ModelCache, ModelInfo
from sd_core.noise import draw_noise_without_waiting
from sd_core.offload import enable_offload, rest_offloaded_weights
from sd_core.preview import PreviewRelay
from sd_core.prompts import PromptEmbeddings
from sd_core.request import EngineSettings, GeneratedImage, GenerationRequest, Mode, Progress, Result
from sd_core.schedulers import make_scheduler
from sd_core.tiling import seamless
from sd_core.vae_precision import keep_vae_in_float32

ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[], bool]

_PIPELINE_CLASSES: dict[tuple[bool, Mode, bool], str] = {
    # (is_sdxl, mode, with_controlnet) -> diffusers class name
    (False, "txt2img", False): "StableDiffusionPipeline",
    (False, "img2img", False): "StableDiffusionImg2ImgPipeline",
    (False, "inpaint", False): "StableDiffusionInpaintPipeline",
    (False, "txt2img", True): "StableDiffusionControlNetPipeline",
    (False, "img2img", True): "StableDiffusionControlNetImg2ImgPipeline",
    (False, "inpaint", True): "StableDiffusionControlNetInpaintPipeline",
    (True, "txt2img", False): "StableDiffusionXLPipeline",
    (True, "img2img", False): "StableDiffusionXLImg2ImgPipeline",
    (True, "inpaint", False): "StableDiffusionXLInpaintPipeline",
    (True, "txt2img", True): "StableDiffusionXLControlNetPipeline",
    (True, "img2img", True): "StableDiffusionXLControlNetImg2ImgPipeline",
    (True, "inpaint", True): "StableDiffusionXLControlNetInpaintPipeline",
}


def pipeline_class_name(family: str, mode: Mode, with_controlnet: bool) -> str:
    """The stock diffusers pipeline sd_core uses for this family and mode (benchmarks compare against it)."""
    return _PIPELINE_CLASSES[(family == "sdxl", mode, with_controlnet)]


class Engine:
    """Runs requests; keeps models loaded between them until ``unload()``. Not thread-safe: one job at a time."""

    def __init__(self, settings: EngineSettings | None = None, cache: ModelCache | None = None) -> None:
        self.settings = settings or EngineSettings()
        self.cache = cache or ModelCache(self.settings)
        placement = self.cache.placement
        self.accelerator = make_accelerator(
            self.settings.acceleration, placement.device, self.settings.cpu_offload, self.settings.compile_cache_dir
        )
        # Mode pipelines over the cached modules, by (model, pipeline class, ControlNets); schedulers by (model, name)
        self._pipelines: dict[tuple[str, str, tuple[str, ...]], Any] = {}
        self._schedulers: dict[tuple[str, str], Any] = {}
        self._prompts = PromptEmbeddings()
        self._loras = LoraMerger()

    def unload(self) -> None:
        """Free every loaded model from host and GPU memory."""
        self._pipelines.clear()
        self._schedulers.clear()
        self._prompts.clear()
        self._loras.forget()
        self.accelerator.reset()
        self.cache.unload()

    def model_info(self, source: str) -> ModelInfo:
        """Load (or reuse) a model and say what it is."""
        return self.cache.base_pipeline(source)[1]

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> Result:
        """Validate, load what is needed, and run. Raises ``SDCoreError`` subclasses on artist errors."""
        request.validate()
        for lora in request.loras:
            check_lora_file(Path(lora.path).expanduser(), self.settings.allow_unsafe_pickle)
        started = time.perf_counter()
        base, info = self.cache.base_pipeline(request.model)
        controlnets = [self.cache.controlnet(control.model) for control in request.controls]
        _check_compatible(request, info, base, controlnets)
        try:
            self._merge_loras(request, base)
        except torch.cuda.OutOfMemoryError as error:
            raise _out_of_memory(request) from error
        pipe = self._pipeline_for(request, base, info, controlnets)
        if self.cache.placement.device.type == "cuda":
            draw_noise_without_waiting(pipe, pipe.scheduler)
        padded_width, padded_height = images.padded_size(*request.size)
        self._check_memory(padded_width, padded_height, vae_dtype=next(pipe.vae.parameters()).dtype)
        loaded = time.perf_counter()

        seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
        # The grown mask the pipeline inpaints, and its feathered version pasted back: dilated once per request.
        grown = images.prepare_mask(request.mask, grow=request.mask_grow) if request.mask is not None else None
        inputs = _prepare_inputs(request, grown, self.cache.placement.device)
        inpainting = request.mode == "inpaint" and grown is not None
        blend = images.prepare_mask(grown, feather=request.mask_feather) if inpainting else None
        results = []
        try:
            with (
                seamless([pipe.unet, pipe.vae, *controlnets], request.tiling),
                self.accelerator.active(pipe, variant=request.tiling, image_pixels=padded_width * padded_height),
            ):
                for index in range(request.batch_size):
                    image_seed = (seed + index) % 2**32
                    pixels = self._run_once(pipe, request, info, inputs, image_seed, index, on_progress, should_cancel)
                    if blend is not None:
                        assert request.image is not None
                        pixels = images.composite(pixels, request.image, blend)
                    metadata = describe(request, info, image_seed)
                    results.append(GeneratedImage(pixels=pixels, seed=image_seed, metadata=metadata))
        except torch.cuda.OutOfMemoryError as error:
            raise _out_of_memory(request) from error
        except RuntimeError as error:
            if "out of memory" in str(error).lower():
                raise _out_of_memory(request) from error
            raise
        finished = time.perf_counter()
        timings = {"load_s": loaded - started, "generate_s": finished - loaded}
        return Result(images=results, mode=request.mode, timings=timings)

    def _merge_loras(self, request: GenerationRequest, base: Any) -> None:
        """Merge the request's LoRAs into the model (undoing any others); its prompts then encode anew."""
        networks = {name: getattr(base, name, None) for name in ("unet", "text_encoder", "text_encoder_2")}
        networks = {name: network for name, network in networks.items() if network is not None}

        def at_rest() -> None:  # low VRAM: write into the weights' host copies, which the GPU loads from
            for network in networks.values():
                rest_offloaded_weights(network)

        rest = at_rest if self.settings.cpu_offload else None
        if self._loras.merge(request.model, networks, request.loras, self.settings.allow_unsafe_pickle, rest):
            self._prompts.forget(request.model)

    def _check_memory(self, width: int, height: int, vae_dtype: torch.dtype) -> None:
        """On CUDA, refuse a (padded) size whose decode cannot fit in the memory left after loading the models."""
        placement = self.cache.placement
        if placement.device.type != "cuda" or self.settings.cpu_offload:
            return
        free_bytes, _total = torch.cuda.mem_get_info(placement.device)
        dtype_bytes = torch.finfo(vae_dtype).bits // 8
        check_fits(width, height, dtype_bytes, free_bytes, self.settings.vae_tiling)

    def _pipeline_for(self, request: GenerationRequest, base: Any, info: ModelInfo, controlnets: list[Any]) -> Any:
        """The mode's pipeline over the loaded modules, built once per model, mode and ControlNets.

        Building one (``from_pipe``) walks every layer of every network, about 20 ms of host time, and a
        scheduler another 3 ms: an artist's next click with the same model reuses both.
        """
        class_name = pipeline_class_name(info.family, request.mode, bool(controlnets))
        key = (request.model, class_name, tuple(control.model for control in request.controls))
        pipe = self._pipelines.get(key)
        if pipe is None:
            pipe = self._pipelines[key] = self._new_pipeline(class_name, base, controlnets)
        scheduler_key = (request.model, request.scheduler)
        if scheduler_key not in self._schedulers:
            self._schedulers[scheduler_key] = make_scheduler(request.scheduler, base.scheduler.config)
        # Shared by the model's pipelines (one job at a time); diffusers resets its state in set_timesteps.
        pipe.scheduler = self._schedulers[scheduler_key]
        if self.settings.cpu_offload:  # diffusers re-installs offload hooks per pipeline; the modules are shared
            enable_offload(pipe, self.cache.placement.device, info.family)
        if self.settings.vae_tiling:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()
        return pipe

    def _new_pipeline(self, class_name: str, base: Any, controlnets: list[Any]) -> Any:
        import diffusers

        cls = getattr(diffusers, class_name)
        if not self.settings.cpu_offload:
            cls = _on_known_device(cls, self.cache.placement.device)
        extra: dict[str, Any] = {}
        if controlnets:
            extra["controlnet"] = controlnets[0] if len(controlnets) == 1 else controlnets
        # from_pipe casts every shared module to its dtype argument, float32 unless told otherwise
        pipe = cls.from_pipe(base, dtype=self.cache.placement.dtype, **extra)
        keep_vae_in_float32(pipe)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _run_once(
        self,
        pipe: Any,
        request: GenerationRequest,
        info: ModelInfo,
        inputs: dict[str, Any],
        seed: int,
        image_index: int,
        on_progress: ProgressCallback | None,
        should_cancel: CancelCheck | None,
    ) -> np.ndarray:
        width, height = request.size
        padded_w, padded_h = images.padded_size(width, height)
        previews = PreviewRelay(info.family, deferred=self.cache.placement.device.type == "cuda")

        def on_step_end(pipeline: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if should_cancel is not None and should_cancel():
                raise CancelledError("Generation cancelled.")
            if on_progress is not None:
                preview = previews.handover(tensors["latents"])
                on_progress(Progress(step + 1, pipeline.num_timesteps, image_index, preview))
            return {}

        if should_cancel is not None and should_cancel():
            raise CancelledError("Generation cancelled.")
        generator = torch.Generator(device="cpu").manual_seed(seed)
        words = self._prompts.arguments(
            pipe, request.model, request.prompt, request.negative_prompt, guidance=request.guidance > 1.0
        )
        if request.mode == "img2img":  # queued now, the encode runs while the pipeline prepares on the host
            dtype = words["prompt_embeds"].dtype
            latents = encode_ahead(pipe, inputs["image"], generator, dtype, info.family == "sdxl", padded_w, padded_h)
            inputs = {**inputs, "image": latents}
        output = pipe(
            **words,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance,
            generator=generator,
            width=padded_w,
            height=padded_h,
            output_type="pt",  # to float32 pixels on the device, not in numpy on the host
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents"],
            **inputs,
        )
        pixels = output.images[0].float().permute(1, 2, 0).contiguous().cpu().numpy()
        return images.crop(pixels, width, height)


@functools.cache
def _on_known_device(cls: type, device: torch.device) -> type:
    """``cls`` told that it runs on ``device``. Diffusers' ``_execution_device`` searches every layer of every
    network for offload hooks on each call (about 5 ms of host time for SD1.5); without offload sd_core knows."""
    return type(cls.__name__, (cls,), {"_execution_device": property(lambda _pipe: device)})


def _prepare_inputs(request: GenerationRequest, grown_mask: np.ndarray | None, device: torch.device) -> dict[str, Any]:
    """Pipeline keyword arguments for the images: padded to multiples of 8, on the GPU where that helps."""
    inputs: dict[str, Any] = {}
    if request.image is not None:
        inputs["image"] = _on_device(request.image, device)
        inputs["strength"] = request.strength
    if grown_mask is not None:
        inputs["mask_image"] = _on_device(grown_mask, device)
    if request.controls:
        control_images = [_on_device(control.image, device) for control in request.controls]
        key = "image" if request.mode == "txt2img" else "control_image"
        single = len(request.controls) == 1
        inputs[key] = control_images[0] if single else control_images
        scales = [control.scale for control in request.controls]
        inputs["controlnet_conditioning_scale"] = scales[0] if single else scales
        starts = [control.start for control in request.controls]
        ends = [control.end for control in request.controls]
        inputs["control_guidance_start"] = starts[0] if single else starts
        inputs["control_guidance_end"] = ends[0] if single else ends
    return inputs


def _on_device(pixels: np.ndarray, device: torch.device) -> np.ndarray | torch.Tensor:
    """An (H, W, 3) picture or (H, W) mask, padded, as a batch diffusers' image processors take.

    On CUDA a (1, C, H, W) tensor already on the GPU: given arrays, diffusers would normalise and resize on
    the host and upload from pageable memory, milliseconds of host time per image; from pinned memory the
    upload does not block the host. Elsewhere a (1, H, W, C) array, exactly what stock diffusers is given.
    """
    padded = images.pad_to_multiple(pixels)
    batch = padded[None, ..., None] if padded.ndim == 2 else padded[None]
    if device.type != "cuda":
        return batch
    return torch.from_numpy(batch).permute(0, 3, 1, 2).pin_memory().to(device, non_blocking=True)


def _check_compatible(request: GenerationRequest, info: ModelInfo, base: Any, controlnets: list[Any]) -> None:
    if info.variant == "inpaint" and request.mode != "inpaint":
        raise ModelError(
            f"'{info.name}' is an inpainting model: it can only inpaint. Add a mask, or choose a regular model "
            f"for {request.mode}."
        )
    text_dim = base.unet.config.cross_attention_dim
    for control, controlnet in zip(request.controls, controlnets, strict=True):
        if controlnet.config.cross_attention_dim != text_dim:
            raise ModelError(
                f"ControlNet '{control.model}' was made for a different model family than '{info.name}' "
                f"({info.family}): choose a ControlNet for {info.family.upper()}."
            )


def _out_of_memory(request: GenerationRequest) -> OutOfMemoryError:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    width, height = request.size
    return OutOfMemoryError(
        f"The GPU ran out of memory at {width}x{height}. Turn on 'CPU offload' and 'VAE tiling' in the low-VRAM "
        "options, lower the size or the batch, or use fewer ControlNets."
    )


def describe(request: GenerationRequest, info: ModelInfo, seed: int) -> dict[str, Any]:
    """Everything needed to reproduce one image; stored in PNGs and on Blender images."""
    width, height = request.size
    metadata: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "mode": request.mode,
        "steps": request.steps,
        "scheduler": request.scheduler,
        "guidance": request.guidance,
        "seed": seed,
        "size": f"{width}x{height}",
        "model": info.name,
        "model_hash": info.hash,
        "model_source": info.source,
        "model_family": info.family,
        "tiling": request.tiling,
        "controlnets": [
            {"model": control.model, "scale": control.scale, "start": control.start, "end": control.end}
            for control in request.controls
        ],
        "loras": [{"name": lora_name(lora), "path": lora.path, "scale": lora.scale} for lora in request.loras],
    }
    if request.mode != "txt2img":
        metadata["strength"] = request.strength
    if request.mode == "inpaint":
        metadata["mask_grow"] = request.mask_grow
        metadata["mask_feather"] = request.mask_feather
    return metadata
