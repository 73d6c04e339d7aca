"""Turn what the artist typed (a file, a folder or a hub id) into a local path of a known kind.

Why: the three sources fail in different ways (missing file, pickled checkpoint, no network) and each
needs its own artist-readable message before anything heavy is imported or loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sd_core.errors import ModelError, UnsafeModelError
from sd_core.request import EngineSettings

SourceKind = Literal["hub", "folder", "single_file"]
Want = Literal["pipeline", "controlnet"]

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# Diffusers pipeline components we load; the safety checker and image encoders are never used.
PIPELINE_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
NETWORK_OFF_HINT = "enable Online Access in Blender's preferences, or use a local file"


@dataclass(frozen=True)
class ResolvedSource:
    kind: SourceKind
    path: Path
    name: str
    is_pickle: bool = False


def resolve_source(source: str, settings: EngineSettings, want: Want) -> ResolvedSource:
    """Locate ``source`` on disk (downloading a hub id only if the network is allowed)."""
    text = str(source).strip()
    path = Path(text).expanduser()
    if path.is_file():
        return _single_file(path, settings)
    if path.is_dir():
        return ResolvedSource("folder", path, path.name)
    looks_like_file = path.suffix.lower() in (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)
    if HUB_ID.match(text) and not looks_like_file:
        return ResolvedSource("hub", hub_snapshot(text, settings, want), text)
    raise ModelError(f"Model not found: '{text}' is not an existing file or folder, nor a hub id like 'owner/name'.")


def _single_file(path: Path, settings: EngineSettings) -> ResolvedSource:
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not settings.allow_unsafe_pickle:
            raise UnsafeModelError(
                f"'{path.name}' is a pickled checkpoint ({suffix}), which can run arbitrary code when loaded, so it "
                "was not opened. Use a .safetensors version of the model, or allow unsafe pickle loading in the "
                "preferences if you trust its source."
            )
        return ResolvedSource("single_file", path, path.stem, is_pickle=True)
    if suffix != SAFETENSORS_SUFFIX:
        raise ModelError(f"'{path.name}' is not a model file: use a .safetensors checkpoint or a diffusers folder.")
    return ResolvedSource("single_file", path, path.stem)


def pick_weight_files(files: list[str], folder: str) -> list[str]:
    """The weights to fetch from one folder of a hub repo: fp16 safetensors, else safetensors, else .bin."""
    prefix = f"{folder}/" if folder else ""
    here = [name for name in files if name.startswith(prefix) and "/" not in name[len(prefix) :]]
    for suffix in (".fp16.safetensors", ".safetensors", ".bin"):
        chosen = [name for name in here if name.endswith(suffix) and (suffix != ".safetensors" or ".fp16." not in name)]
        if chosen:
            return chosen
    return []


def _hub_patterns(repo_id: str, want: Want) -> list[str]:
    from huggingface_hub import HfApi

    files = HfApi().list_repo_files(repo_id)
    if want == "controlnet":
        return ["config.json", *pick_weight_files(files, "")]
    patterns = ["model_index.json"]
    for component in PIPELINE_COMPONENTS:
        patterns += [f"{component}/*.json", f"{component}/*.txt", *pick_weight_files(files, component)]
    return patterns


def hub_snapshot(repo_id: str, settings: EngineSettings, want: Want) -> Path:
    """The local snapshot folder of ``repo_id``: from the HF cache, or downloaded when the network is allowed."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    if not settings.allow_network:
        try:
            return Path(snapshot_download(repo_id, local_files_only=True))
        except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as error:
            raise ModelError(
                f"'{repo_id}' is not downloaded and network access is off ({NETWORK_OFF_HINT})."
            ) from error
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_hub_patterns(repo_id, want)))
    except GatedRepoError as error:
        raise ModelError(
            f"'{repo_id}' is gated on the Hugging Face hub: accept its licence on its page and log in first."
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelError(f"Model not found: '{repo_id}' does not exist on the Hugging Face hub.") from error
    except (HfHubHTTPError, OSError) as error:
        raise ModelError(f"Could not download '{repo_id}': {error}. Check the connection and try again.") from error
