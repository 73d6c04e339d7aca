"""LoRAs merged into a loaded model's weights, and taken out again exactly.

Why merged: a merged LoRA costs nothing per step, and every speed path sd_core prepares (CUDA graphs, fused
projections, stacked time projections) reads the very weight tensors that change in place, so it keeps working
as prepared. Why exactly: before a weight is first changed its original is copied to host memory; each later
set of LoRAs (another file, another scale, none) is merged onto that original, so switching never drifts.

Files: ``.safetensors`` in the kohya / A1111 layout (``lora_unet_*``, ``lora_te_*``, ``lora_te1_*``,
``lora_te2_*`` with ``lora_down``, ``lora_up`` and ``alpha``; SDXL's UNet in either diffusers' or the
original ``input_blocks`` names) or diffusers' / PEFT's (``unet.<layer>.lora_A.weight`` and ``lora_B``,
``text_encoder.``, ``text_encoder_2.``, with the PEFT settings diffusers stores beside them; also UNet-only
and diffusers' old attention-processor layout). LoCon's convolution LoRAs are merged too; LyCORIS' other kinds
(LoHa, LoKr, full-weight differences) and DoRA are refused with a message rather than applied wrongly.

Memory: each weight's update is worked out as the weight is written (one layer at a time on its device), and the
originals stay in host memory while the model is loaded (SDXL, every attention and feed-forward layer: 4.4 GB).
"""

from __future__ import annotations

import json
import math
import re
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
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
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
    ("_lora.down.weight", "_lora.up.weight"),  # diffusers' old attention-processor layout, renamed below
)
# That old layout's names: (as written, as the module is called), in a UNet's attention and in CLIP's.
_OLD_DIFFUSERS_NAMES = (
    (".processor.to_q", ".to_q"), (".processor.to_k", ".to_k"), (".processor.to_v", ".to_v"),
    (".processor.to_out", ".to_out.0"), ("self_attn.to_q", "self_attn.q_proj"), ("self_attn.to_k", "self_attn.k_proj"),
    ("self_attn.to_v", "self_attn.v_proj"), ("self_attn.to_out", "self_attn.out_proj"),
)  # fmt: skip
# Where a UNet's own paths begin: PEFT files of a UNet alone carry no ``unet.`` prefix.
_UNET_PATHS = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "time_embedding.", "add_embedding.")
# Parts of a file that change the model in ways a low-rank merge does not: refused rather than left out.
_UNMERGEABLE = re.compile(r"(\.diff|\.diff_b|\.bias|_norm\.weight)$")
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
            and math.prod(self.up.shape[2:]) == 1
            and self.up.shape[0] == weight.shape[0]
            and self.up.shape[0] * math.prod(self.down.shape[1:]) == weight.numel()
        )

    def add_to(self, rows: torch.Tensor, scale: float) -> None:
        """Add ``scale`` times this update to ``rows``, a float32 weight seen as (outputs, inputs), in place."""
        factor = scale * (self.alpha / self.down.shape[0] if self.alpha is not None else 1.0)
        up, down = (part.to(rows.device, torch.float32).flatten(1) for part in (self.up, self.down))
        rows.addmm_(up, down, alpha=factor)


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
    layers, used = [], set()
    for key, down in state.items():
        pair = next(((d, u) for d, u in _PAIRS if key.endswith(d)), None)
        if pair is None:
            continue
        stem = key[: -len(pair[0])]
        up = state.get(stem + pair[1])
        if up is None:
            raise ModelError(f"'{file_name}' is damaged: layer '{stem}' has no up weight.")
        network, name = _network_and_name(_renamed(stem, pair[0]), file_name)
        alpha = state.get(stem + ".alpha")
        used |= {key, stem + pair[1], stem + ".alpha"}
        alpha = float(alpha) if alpha is not None else _peft_alpha(peft, network, name, rank=down.shape[0])
        layers.append(LoraLayer(network, name, down, up, alpha))
    unmergeable = sorted(key for key in state if key not in used and _UNMERGEABLE.search(key))
    if unmergeable:
        raise ModelError(
            f"'{file_name}' also changes parts of the model a LoRA merge cannot (such as '{unmergeable[0]}'): "
            "use a plain LoRA or LoCon."
        )
    if not layers:
        raise ModelError(f"'{file_name}' holds no LoRA layers: it is not a LoRA, or of a kind sd_core cannot read.")
    return layers


def _renamed(stem: str, down_suffix: str) -> str:
    """A layer's name in diffusers' old attention-processor layout as its module is called, else as written."""
    if down_suffix != "_lora.down.weight":
        return stem
    for written, called in _OLD_DIFFUSERS_NAMES:
        if stem.endswith(written):
            return stem[: -len(written)] + called
    return stem


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
    if stem.startswith(_UNET_PATHS):
        return "unet", stem
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


@dataclass
class _LoadedModel:
    """What the merger knows of one loaded model's networks."""

    unet: weakref.ref  # the networks merged into: a model loaded again is another one
    names: dict[str, dict[str, str]]  # per network, every name a LoRA may give each layer (``layer_names``)
    merged: tuple = ()  # the LoRAs merged, as ``_identity`` gives them
    # The originals of every weight a LoRA changed, kept while the model is loaded: taking a LoRA out and putting
    # it back (an artist comparing) then copies nothing to the host (SDXL: 0.4 s a switch on an H100, not 3 s).
    originals: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)


class LoraMerger:
    """The LoRAs merged into each loaded model's networks, and the originals of the weights they changed."""

    def __init__(self) -> None:
        self._models: dict[str, _LoadedModel] = {}

    def merge(
        self,
        model: str,
        networks: Mapping[str, torch.nn.Module],
        loras: Iterable[LoraSpec],
        allow_pickle: bool,
        before_writing: Callable[[], None] | None = None,
    ) -> bool:
        """Make ``model``'s networks carry exactly ``loras``; returns whether any weight changed.

        Every file is read and placed before a weight is touched, so a bad LoRA leaves the model as it was. Each
        weight's update is worked out as it is written, so merging needs the memory of one layer, not of all.
        ``before_writing`` runs first when weights are about to change (the low-VRAM mode puts them at rest).
        """
        loras = tuple(loras)
        wanted = tuple(_identity(lora) for lora in loras)
        known = self._models.get(model)
        if known is None or known.unet() is not networks["unet"]:
            names = {network: layer_names(module, network == "unet") for network, module in networks.items()}
            known = self._models[model] = _LoadedModel(weakref.ref(networks["unet"]), names)
        if known.merged == wanted:
            return False
        updates: dict[tuple[str, str], list[tuple[LoraLayer, float]]] = {}
        for lora in loras:
            path = Path(lora.path).expanduser()
            for key, layer in _placed(read_lora(path, allow_pickle), networks, known.names, path.name):
                updates.setdefault(key, []).append((layer, lora.scale))
        # Until every weight is written the model carries no known set: a failure midway (out of memory) makes
        # the next request write them all again, from the originals.
        known.merged = (_UNKNOWN,)
        if before_writing is not None:
            before_writing()
        with torch.no_grad():
            new = [key for key in updates if key not in known.originals]
            known.originals |= _kept_originals({key: _weight(networks, key) for key in new})
            for key, original in known.originals.items():
                _write(_weight(networks, key), original, updates.get(key, []))
        known.merged = wanted
        return True

    def forget(self) -> None:
        """Drop what is known of every model: they were unloaded."""
        self._models.clear()


_UNKNOWN = object()
# Originals are kept in pinned blocks of this size, each holding several weights: PyTorch rounds every pinned
# allocation up to a power of two, which one allocation per weight (or one for all) would waste.
_ORIGINALS_BLOCK_BYTES = 64 << 20
_ALIGNMENT = 64


def _weight(networks: Mapping[str, torch.nn.Module], key: tuple[str, str]) -> torch.Tensor:
    return networks[key[0]].get_submodule(key[1]).weight


def _kept_originals(weights: Mapping[tuple[str, str], torch.Tensor]) -> dict[tuple[str, str], torch.Tensor]:
    """Host copies of ``weights``: pinned where they live on a GPU, so they copy back at the link's full speed."""
    pinned = torch.cuda.is_available() and any(weight.is_cuda for weight in weights.values())
    kept: dict[tuple[str, str], torch.Tensor] = {}
    block, used = torch.empty(0, dtype=torch.uint8), 0
    for key, weight in weights.items():
        size = weight.numel() * weight.element_size()
        if used + size > block.numel():
            block, used = torch.empty(max(size, _ORIGINALS_BLOCK_BYTES), dtype=torch.uint8, pin_memory=pinned), 0
        kept[key] = block[used : used + size].view(weight.dtype).view(weight.shape).copy_(weight)
        used += -(-size // _ALIGNMENT) * _ALIGNMENT
    return kept


def _write(weight: torch.Tensor, original: torch.Tensor, updates: list[tuple[LoraLayer, float]]) -> None:
    """``weight`` becomes ``original`` plus ``updates`` (each a layer and its scale), rounded once, in place."""
    if not updates:
        weight.copy_(original, non_blocking=True)
        return
    rows = original.to(weight.device, torch.float32, non_blocking=True, copy=True).view(weight.shape[0], -1)
    for layer, scale in updates:
        layer.add_to(rows, scale)
    weight.copy_(rows.view(weight.shape))


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
) -> list[tuple[tuple[str, str], LoraLayer]]:
    """Each layer with its (network, module path); ``ModelError`` if one has no place in these networks."""
    placed = []
    for layer in layers:
        module_path = names.get(layer.network, {}).get(layer.name)
        if module_path is None:
            raise ModelError(
                f"'{file_name}' does not fit this model: it changes '{layer.name}', which this model does not have. "
                "Is it a LoRA for another model family (SD1.5, SDXL)?"
            )
        if not layer.fits(_weight(networks, (layer.network, module_path))):
            raise ModelError(
                f"'{file_name}' does not fit this model: its layer '{layer.name}' has another size. "
                "Is it a LoRA for another model family (SD1.5, SDXL)?"
            )
        placed.append(((layer.network, module_path), layer))
    return placed


def lora_name(lora: LoraSpec) -> str:
    """What A1111 calls a LoRA in a prompt's ``<lora:name:scale>``: its file name without the extension."""
    return re.sub(r"\.(safetensors|ckpt|pt|pth|bin)$", "", Path(lora.path).name, flags=re.IGNORECASE)
