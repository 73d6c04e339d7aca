"""The typed API between a caller (the Blender add-on, the CLI, a pipeline script) and the engine.

A caller fills a ``GenerationRequest``, the engine returns a ``Result``. Images travel as numpy
arrays, top row first, float32 in [0, 1], display-referred (sRGB), shape (H, W, 3); masks are
(H, W) float32 where 1 means "generate here". ``validate()`` raises every artist-facing error before
any weights are loaded, so a bad click costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from sd_core.errors import ValidationError
from sd_core.schedulers import SCHEDULERS

Mode = Literal["txt2img", "img2img", "inpaint"]
Tiling = Literal["none", "x", "y", "xy"]
TILINGS: tuple[Tiling, ...] = ("none", "x", "y", "xy")

MIN_SIDE = 64
MAX_SIDE = 4096


@dataclass(frozen=True)
class ControlSpec:
    """One ControlNet: which model, its conditioning image, and when/how hard it steers."""

    model: str
    image: np.ndarray
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA merged into the model for this request: its file and how strongly (1.0 as trained)."""

    path: str
    scale: float = 1.0

    @classmethod
    def from_argument(cls, text: str) -> LoraSpec:
        """A command line's ``PATH[:SCALE]``; only a number after the last colon is a scale, so a Windows path
        (``C:\\loras\\moss.safetensors``) stays whole."""
        path, colon, scale = text.rpartition(":")
        if colon:
            try:
                return cls(path, float(scale))
            except ValueError:
                pass
        return cls(text)


@dataclass
class GenerationRequest:
    """Everything one generation needs. The mode follows from which images are given."""

    model: str
    prompt: str
    negative_prompt: str = ""
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    controls: tuple[ControlSpec, ...] = ()
    loras: tuple[LoraSpec, ...] = ()
    width: int | None = None
    height: int | None = None
    strength: float = 0.75
    steps: int = 20
    guidance: float = 7.0
    seed: int | None = None
    batch_size: int = 1
    scheduler: str = "dpmpp_2m_karras"
    tiling: Tiling = "none"
    mask_grow: int = 0
    mask_feather: int = 0

    @property
    def mode(self) -> Mode:
        if self.mask is not None:
            return "inpaint"
        if self.image is not None:
            return "img2img"
        return "txt2img"

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the output: explicit size, else the input image's, else 512²."""
        if self.width is not None and self.height is not None:
            return self.width, self.height
        if self.image is not None:
            return self.image.shape[1], self.image.shape[0]
        if self.controls:
            return self.controls[0].image.shape[1], self.controls[0].image.shape[0]
        return self.width or 512, self.height or 512

    @property
    def denoising_steps(self) -> int:
        """How many UNet steps actually run: img2img and inpaint skip the first (1 - strength)."""
        if self.mode == "txt2img":
            return self.steps
        return int(self.steps * self.strength)

    def validate(self) -> None:
        """Raise ``ValidationError`` with an artist-readable message if this cannot run."""
        if not self.model or not str(self.model).strip():
            raise ValidationError("No model is configured: choose a checkpoint, a diffusers folder or a hub id.")
        if self.steps < 1:
            raise ValidationError(f"Steps must be at least 1 (got {self.steps}).")
        if self.batch_size < 1:
            raise ValidationError(f"Batch size must be at least 1 (got {self.batch_size}).")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise ValidationError(f"Guidance must be a number of 0 or more (got {self.guidance}).")
        if self.scheduler not in SCHEDULERS:
            raise ValidationError(f"Unknown scheduler '{self.scheduler}'. Choose one of: {', '.join(SCHEDULERS)}.")
        if self.tiling not in TILINGS:
            raise ValidationError(f"Tiling must be one of {', '.join(TILINGS)} (got '{self.tiling}').")
        if self.mask_grow < 0 or self.mask_feather < 0:
            raise ValidationError("Mask grow and feather cannot be negative.")
        width, height = self.size
        for name, side in (("Width", width), ("Height", height)):
            if not MIN_SIDE <= side <= MAX_SIDE:
                raise ValidationError(f"{name} must be between {MIN_SIDE} and {MAX_SIDE} pixels (got {side}).")
        if self.mode != "txt2img":
            self._validate_strength()
        if self.image is not None:
            _check_image(self.image, "The input image")
            if (self.image.shape[1], self.image.shape[0]) != (width, height):
                raise ValidationError(
                    f"The input image is {self.image.shape[1]}x{self.image.shape[0]} but the output size is "
                    f"{width}x{height}: use the image's size or resize the image first."
                )
        if self.mask is not None:
            self._validate_mask(width, height)
        for index, control in enumerate(self.controls, start=1):
            _validate_control(control, index, width, height)
        for index, lora in enumerate(self.loras, start=1):
            if not str(lora.path).strip():
                raise ValidationError(f"LoRA {index} has no file: choose one or remove it.")
            if not math.isfinite(lora.scale):
                raise ValidationError(f"LoRA {index}'s scale must be a number (got {lora.scale}).")

    def _validate_strength(self) -> None:
        if not 0.0 < self.strength <= 1.0:
            raise ValidationError(f"Strength must be above 0 and at most 1 (got {self.strength}).")
        if self.denoising_steps < 1:
            needed = math.ceil(1.0 / self.steps * 100) / 100
            raise ValidationError(
                f"Strength {self.strength} with {self.steps} steps runs no denoising step: "
                f"raise strength to at least {needed:.2f} or raise the step count."
            )

    def _validate_mask(self, width: int, height: int) -> None:
        if self.image is None:
            raise ValidationError("Inpainting needs an input image as well as a mask.")
        mask = self.mask
        assert mask is not None
        if mask.ndim != 2:
            raise ValidationError(f"The mask must be a single-channel image (got shape {mask.shape}).")
        if mask.shape != (height, width):
            raise ValidationError(
                f"The mask is {mask.shape[1]}x{mask.shape[0]} but the image is {width}x{height}: "
                "they must be the same size."
            )
        if not np.isfinite(mask).all():
            raise ValidationError("The mask contains invalid values (NaN or infinity).")
        if float(mask.max()) <= 0.0:
            raise ValidationError("The mask is empty: paint the area to regenerate (white = regenerate).")


def _check_image(image: np.ndarray, what: str) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValidationError(f"{what} must be an RGB image (got shape {image.shape}).")
    if not np.isfinite(image).all():
        raise ValidationError(f"{what} contains invalid values (NaN or infinity).")


def _validate_control(control: ControlSpec, index: int, width: int, height: int) -> None:
    what = f"ControlNet {index}'s image"
    if not control.model:
        raise ValidationError(f"ControlNet {index} has no model: choose one or remove it.")
    _check_image(control.image, what)
    if (control.image.shape[1], control.image.shape[0]) != (width, height):
        raise ValidationError(
            f"{what} is {control.image.shape[1]}x{control.image.shape[0]} but the output is {width}x{height}: "
            "they must match."
        )
    if control.scale < 0:
        raise ValidationError(f"ControlNet {index}'s scale cannot be negative (got {control.scale}).")
    if not 0.0 <= control.start < control.end <= 1.0:
        raise ValidationError(
            f"ControlNet {index} must start before it ends, both between 0 and 1 "
            f"(got start {control.start}, end {control.end})."
        )


@dataclass(frozen=True)
class EngineSettings:
    """Per-engine choices, typically from the add-on preferences, not per click."""

    device: str = "auto"  # auto | cuda | cuda:N | mps | cpu
    dtype: str = "auto"  # auto | float16 | bfloat16 | float32
    cpu_offload: bool = False
    vae_tiling: bool = False
    allow_network: bool = False
    allow_unsafe_pickle: bool = False
    # auto | off | cuda_graphs | compile: "auto" replays CUDA graphs on CUDA, plain elsewhere; "compile" also
    # compiles the UNet and ControlNets (minutes the first time, cached on disk for later processes)
    acceleration: str = "auto"
    compile_cache_dir: str = ""  # "compile"'s kernel cache; "" = TORCHINDUCTOR_CACHE_DIR, else HF_HOME/sd_core/...


@dataclass(frozen=True)
class Progress:
    """One finished denoising step. ``preview`` is a cheap RGB approximation, not the VAE decode.

    On a GPU the preview is one step behind (None at the first step), so the GPU never waits for it.
    """

    step: int
    total: int
    image_index: int
    preview: np.ndarray | None = None


@dataclass
class GeneratedImage:
    pixels: np.ndarray
    seed: int
    metadata: dict[str, object] = field(default_factory=dict)


@dataclass
class Result:
    images: list[GeneratedImage]
    mode: Mode
    timings: dict[str, float] = field(default_factory=dict)
