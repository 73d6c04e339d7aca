"""LoRAs merged into a loaded model's weights, and taken out again exactly.

Why merged: a merged LoRA costs nothing per step, and every speed path sd_core prepares (CUDA graphs, fused
projections, stacked time projections) reads the very weight tensors that change in place, so it keeps working
as prepared. Why exactly: before a weight is first changed its original is copied to host memory; each later
set of LoRAs (another file, another scale, none) is merged onto that original, so switching never drifts.

Files: ``.safetensors`` in the kohya / A1111 layout (``lora_unet_*``, ``lora_te_*``, ``lora_te1_*``,
``lora_te2_*`` with ``lora_down``, ``lora_up`` and ``alpha``; SDXL's UNet in either diffusers' or the
original ``input_blocks`` names) or diffusers' / PEFT's (``unet.<layer>.lora_A.weight`` and ``lora_B``,
``text_encoder.``, ``text_encoder_2.``). LoCon's convolution LoRAs are merged too; LyCORIS' other kinds
(LoHa, LoKr) and DoRA are refused with a message rather than applied wrongly.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sd_core.errors import ModelError, UnsafeModelError
from sd_core.models import ldm_layout
from sd_core.models.sources import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX
from sd_core.request import LoraSpec

# Which network a key prefix names: kohya's, then diffusers' / PEFT's.
_KOHYA_PREFIXES = {
    "lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"
}  # fmt: skip
_DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")
# (down, up) weight suffixes of one layer, per layout.
_PAIRS = (
    (".lora_down.weight", ".lora_up.weight"),
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
)
# The safetensors metadata entry where diffusers stores each network's PEFT settings, as JSON.
PEFT_SETTINGS_KEY = "lora_adapter_metadata"
_UNSUPPORTED = {"hada_w1_a": "a LoHa", "lokr_w1": "a LoKr", "dora_scale": "a DoRA", "lora_mid": "a LoCon with a mid"}


@dataclass(frozen=True)
class LoraLayer:
    """One layer's low-rank update: ``weight += scale * alpha / rank * up @ down``."""

    network: str  # "unet", "text_encoder" or "text_encoder_2"
    name: str  # the layer as its key was written: a module path (dots) or kohya's (underscores)
    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None  # None: alpha equals the rank (PEFT's default)

    def fits(self, weight: torch.Tensor) -> bool:
        rank = self.down.shape[0]
        return (
            self.up.ndim >= 2
            and self.up.shape[1] == rank
            and self.up.shape[0] == weight.shape[0]
            and self.up.shape[0] * math.prod(self.down.shape[1:]) == weight.numel()
        )

    def delta(self, weight: torch.Tensor, scale: float) -> torch.Tensor:
        """The update for ``weight``, in float32 on its device (a GPU multiplies SDXL's hundreds of layers at once)."""
        rank = self.down.shape[0]
        factor = scale * (self.alpha / rank if self.alpha is not None else 1.0)
        up, down = (part.to(weight.device, torch.float32).flatten(1) for part in (self.up, self.down))
        return (up @ down).mul_(factor).reshape(weight.shape)


def check_lora_file(path: Path, allow_unsafe_pickle: bool) -> None:
    """Refuse a LoRA that cannot be read from its name alone: missing, pickled (unless allowed), not a LoRA file.

    The engine asks before loading the model, so a mistyped path costs no wait for a checkpoint to load.
    """
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ModelError(f"LoRA not found: '{path}' is not an existing file.")
    if suffix in PICKLE_SUFFIXES and not allow_unsafe_pickle:
        raise UnsafeModelError(
            f"'{path.name}' is a pickled LoRA ({suffix}), which can run arbitrary code when loaded, so it was not "
            "opened. Use a .safetensors version, or allow unsafe pickle loading in the preferences if you trust "
            "its source."
        )
    if suffix not in (*PICKLE_SUFFIXES, SAFETENSORS_SUFFIX):
        raise ModelError(f"'{path.name}' is not a LoRA file: use a .safetensors LoRA.")


def read_lora(path: Path, allow_unsafe_pickle: bool) -> list[LoraLayer]:
    """The layers of the LoRA file at ``path``; ``ModelError`` with an artist's message if it is not one."""
    check_lora_file(path, allow_unsafe_pickle)
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        return parse_lora(*_read_safetensors(path), path.name)
    return parse_lora(_unpickle(path), {}, path.name)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors, and the PEFT settings diffusers stores beside them (``lora_alpha`` when it is not the rank)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (not a dict)
            settings = json.loads((file.metadata() or {}).get(PEFT_SETTINGS_KEY) or "{}")
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelError(f"'{path.name}' could not be read: the file is damaged or incomplete ({error}).") from error
    return tensors, settings if isinstance(settings, dict) else {}


def _unpickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # arbitrary pickled code may raise anything
        raise ModelError(f"'{path.name}' could not be read as a PyTorch file: {error}") from error
    if not isinstance(state, dict):
        raise ModelError(f"'{path.name}' does not contain a state dict: it is not a LoRA.")
    return {str(key): value for key, value in state.items() if isinstance(value, torch.Tensor)}


def parse_lora(state: Mapping[str, torch.Tensor], peft: Mapping[str, Any], file_name: str) -> list[LoraLayer]:
    """Pair each layer's down and up weights (and alpha) in any supported layout; ``peft``: the PEFT settings of
    diffusers' files (``unet.lora_alpha``, ``unet.alpha_pattern``...), for layers whose alpha is not in ``state``."""
    for marker, kind in _UNSUPPORTED.items():
        if any(marker in key for key in state):
            raise ModelError(f"'{file_name}' is {kind}, which sd_core cannot merge: use a plain LoRA or LoCon.")
    layers = []
    for key, down in state.items():
        pair = next(((d, u) for d, u in _PAIRS if key.endswith(d)), None)
        if pair is None:
            continue
        stem = key[: -len(pair[0])]
        up = state.get(stem + pair[1])
        if up is None:
            raise ModelError(f"'{file_name}' is damaged: layer '{stem}' has no up weight.")
        network, name = _network_and_name(stem, file_name)
        alpha = state.get(stem + ".alpha")
        alpha = float(alpha) if alpha is not None else _peft_alpha(peft, network, name, rank=down.shape[0])
        layers.append(LoraLayer(network, name, down, up, alpha))
    if not layers:
        raise ModelError(f"'{file_name}' holds no LoRA layers: it is not a LoRA, or of a kind sd_core cannot read.")
    return layers


def _peft_alpha(peft: Mapping[str, Any], network: str, name: str, rank: int) -> float | None:
    """PEFT's alpha for one layer (its ``alpha_pattern`` entry, else ``lora_alpha``); None where none is stored.

    With rsLoRA PEFT scales by alpha / sqrt(rank), not alpha / rank: returned as the alpha that gives it.
    """
    alpha = peft.get(f"{network}.lora_alpha")
    for pattern, value in (peft.get(f"{network}.alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?(?:{pattern})", name):
            alpha = value
    if alpha is None:
        return None
    return float(alpha) * math.sqrt(rank) if peft.get(f"{network}.use_rslora") else float(alpha)


def _network_and_name(stem: str, file_name: str) -> tuple[str, str]:
    for prefix, network in _KOHYA_PREFIXES.items():
        if stem.startswith(prefix):
            return network, stem[len(prefix) :]
    for prefix in _DIFFUSERS_PREFIXES:
        if stem.startswith(prefix):
            return prefix[:-1], stem[len(prefix) :]
    raise ModelError(f"'{file_name}' has a layer sd_core cannot place ('{stem}'): it is not a LoRA for SD or SDXL.")


def layer_names(network: torch.nn.Module, is_unet: bool) -> dict[str, str]:
    """Every name a LoRA may give each of ``network``'s linear and convolution layers, to its module path.

    A module path ``a.b.c`` is also written ``a_b_c`` (kohya); a UNet's also in the original layout's names
    (``input_blocks.4.1...``), as SDXL LoRAs trained by kohya's scripts write them.
    """
    paths = [name for name, module in network.named_modules() if isinstance(module, torch.nn.Linear | torch.nn.Conv2d)]
    written = {path: path for path in paths}
    if not is_unet:  # transformers 5's CLIPTextModel dropped the ``text_model`` level LoRA files still name
        written |= {f"text_model.{path}": path for path in paths if not path.startswith("text_model.")}
    names = written | {name.replace(".", "_"): path for name, path in written.items()}
    if is_unet:
        layers_per_block = network.config.layers_per_block
        ldm = ldm_layout.unet_to_ldm({f"{path}.weight": path for path in paths}, layers_per_block, "")
        names |= {key.removesuffix(".weight").replace(".", "_"): path for key, path in ldm.items()}
    return names


class LoraMerger:
    """The LoRAs merged into each loaded model's networks, and the originals of the weights they changed."""

    def __init__(self) -> None:
        # Per model: which LoRAs are merged (their files' identities and scales), the originals of the weights
        # they changed, and the names a LoRA may give each layer of each network (worked out once).
        self._merged: dict[str, tuple[tuple, ...]] = {}
        self._originals: dict[str, dict[tuple[str, str], torch.Tensor]] = {}
        self._names: dict[str, dict[str, dict[str, str]]] = {}

    def merge(
        self, model: str, networks: Mapping[str, torch.nn.Module], loras: Iterable[LoraSpec], allow_pickle: bool
    ) -> bool:
        """Make ``model``'s networks carry exactly ``loras``; returns whether any weight changed.

        Every file is read and placed before a weight is touched, so a bad LoRA leaves the model as it was.
        """
        loras = tuple(loras)
        wanted = tuple(_identity(lora) for lora in loras)
        if self._merged.get(model, ()) == wanted:
            return False
        if model not in self._names:
            self._names[model] = {
                network: layer_names(module, network == "unet") for network, module in networks.items()
            }
        deltas: dict[tuple[str, str], torch.Tensor] = {}
        for lora in loras:
            path = Path(lora.path).expanduser()
            layers = read_lora(path, allow_pickle)
            for key, delta in _placed(layers, networks, self._names[model], path.name, lora.scale):
                deltas[key] = deltas[key] + delta if key in deltas else delta
        originals = self._originals.setdefault(model, {})
        # Until every weight is written the model carries no known set: a failure midway (out of memory) makes
        # the next request write them all again, from the originals.
        self._merged[model] = (_UNKNOWN,)
        with torch.no_grad():
            for key in set(originals) | set(deltas):
                weight = networks[key[0]].get_submodule(key[1]).weight
                if key not in originals:
                    # pinned: copied back at the host link's full speed when the LoRA is switched or taken out
                    pinned = torch.cuda.is_available() and weight.is_cuda
                    originals[key] = torch.empty_like(weight, device="cpu", pin_memory=pinned).copy_(weight)
                _write(weight, originals[key], deltas.get(key))
        self._merged[model] = wanted
        return True

    def forget(self, model: str | None = None) -> None:
        """Drop what is known of ``model`` (every model if None): its networks were unloaded."""
        for known in [model] if model is not None else list(self._merged):
            self._merged.pop(known, None)
            self._originals.pop(known, None)
            self._names.pop(known, None)


_UNKNOWN = object()


def _write(weight: torch.Tensor, original: torch.Tensor, delta: torch.Tensor | None) -> None:
    """``weight`` becomes ``original`` plus ``delta`` (rounded once, to the weight's precision), in place."""
    original = original.to(weight.device, non_blocking=True)
    weight.copy_((original.float() + delta).to(weight.dtype) if delta is not None else original)


def _identity(lora: LoraSpec) -> tuple:
    """A LoRA as merged: its file (so an edited file is read again) and its scale."""
    path = Path(lora.path).expanduser()
    try:
        stat = path.stat()
        return (str(path.resolve()), stat.st_mtime_ns, stat.st_size, lora.scale)
    except OSError:
        return (str(path), None, None, lora.scale)


def _placed(
    layers: list[LoraLayer],
    networks: Mapping[str, torch.nn.Module],
    names: Mapping[str, Mapping[str, str]],
    file_name: str,
    scale: float,
) -> Iterable[tuple[tuple[str, str], torch.Tensor]]:
    """Each layer's module and its update; ``ModelError`` if a layer has no place in these networks."""
    placed = []
    for layer in layers:
        module_path = names.get(layer.network, {}).get(layer.name)
        if module_path is None:
            raise ModelError(
                f"'{file_name}' does not fit this model: it changes '{layer.name}', which this model does not have. "
                "Is it a LoRA for another model family (SD1.5, SDXL)?"
            )
        weight = networks[layer.network].get_submodule(module_path).weight
        if not layer.fits(weight):
            raise ModelError(
                f"'{file_name}' does not fit this model: its layer '{layer.name}' has another size. "
                "Is it a LoRA for another model family (SD1.5, SDXL)?"
            )
        placed.append(((layer.network, module_path), layer.delta(weight, scale)))
    return placed


def lora_name(lora: LoraSpec) -> str:
    """What A1111 calls a LoRA in a prompt's ``<lora:name:scale>``: its file name without the extension."""
    return re.sub(r"\.(safetensors|ckpt|pt|pth|bin)$", "", Path(lora.path).name, flags=re.IGNORECASE)
