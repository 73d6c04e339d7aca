"""Pick the device and precision: CUDA (fp16, or bf16 where supported and asked), MPS, else CPU fp32."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sd_core.errors import ValidationError

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    def describe(self) -> str:
        name = str(self.device)
        if self.device.type == "cuda":
            name += f" ({torch.cuda.get_device_name(self.device)})"
        return f"{name}, {str(self.dtype).removeprefix('torch.')}"


def resolve_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """Turn the 'auto'/'cuda'/'mps'/'cpu' and dtype settings into a concrete torch placement."""
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    try:
        torch_device = torch.device(device)
    except RuntimeError as error:
        raise ValidationError(f"Unknown device '{device}': use auto, cuda, mps or cpu.") from error
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ValidationError("CUDA was requested but no NVIDIA GPU is usable here: choose 'auto' or 'cpu'.")
    if torch_device.type == "mps" and not torch.backends.mps.is_available():
        raise ValidationError("Apple Metal (MPS) was requested but is not available here: choose 'auto' or 'cpu'.")
    if dtype == "auto":
        torch_dtype = torch.float32 if torch_device.type == "cpu" else torch.float16
    elif dtype in _DTYPES:
        torch_dtype = _DTYPES[dtype]
    else:
        raise ValidationError(f"Unknown precision '{dtype}': use auto, float16, bfloat16 or float32.")
    return Placement(torch_device, torch_dtype)
