"""Named samplers, spelled as artists know them from A1111 and ComfyUI.

Each name maps to a diffusers scheduler class and the config overrides that make it that sampler.
The table is data so that the UI, the CLI and PNG metadata all read the same names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SchedulerSpec:
    label: str  # what A1111 writes in "Sampler:"
    class_name: str
    overrides: dict[str, Any] = field(default_factory=dict)


SCHEDULERS: dict[str, SchedulerSpec] = {
    "euler": SchedulerSpec("Euler", "EulerDiscreteScheduler"),
    "euler_a": SchedulerSpec("Euler a", "EulerAncestralDiscreteScheduler"),
    "dpmpp_2m": SchedulerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmpp_2m_karras": SchedulerSpec(
        "DPM++ 2M Karras",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    "dpmpp_sde_karras": SchedulerSpec(
        "DPM++ SDE Karras",
        "DPMSolverSinglestepScheduler",
        {"use_karras_sigmas": True},
    ),
    "unipc": SchedulerSpec("UniPC", "UniPCMultistepScheduler"),
    "ddim": SchedulerSpec("DDIM", "DDIMScheduler"),
    "pndm": SchedulerSpec("PLMS", "PNDMScheduler"),
    "lms": SchedulerSpec("LMS", "LMSDiscreteScheduler"),
    "heun": SchedulerSpec("Heun", "HeunDiscreteScheduler"),
    "lcm": SchedulerSpec("LCM", "LCMScheduler"),
}


def make_scheduler(name: str, base_config: dict[str, Any]) -> Any:
    """A fresh scheduler of the named kind, keeping the model's own training config (betas, prediction)."""
    import diffusers

    spec = SCHEDULERS[name]
    cls = getattr(diffusers, spec.class_name)
    return cls.from_config(base_config, **spec.overrides)
