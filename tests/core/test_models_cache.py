"""Loading through ModelCache: single files equal their folders, pickles are refused, the cache caches."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from sd_core.errors import ModelError, UnsafeModelError
from sd_core.models import ModelCache
from sd_core.request import EngineSettings
from sd_core.testing.tiny_models import write_pickle_checkpoint

CPU = EngineSettings(device="cpu")


@pytest.fixture(scope="module")
def cache() -> ModelCache:
    return ModelCache(CPU)


def _assert_same_weights(first: torch.nn.Module, second: torch.nn.Module) -> None:
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys()
    different = [key for key in first_state if not torch.equal(first_state[key], second_state[key])]
    assert not different, different[:5]


def _generate(pipeline) -> np.ndarray:
    return pipeline(
        "a photo of a cat",
        num_inference_steps=2,
        guidance_scale=7.0,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    ).images


@pytest.mark.parametrize("key", ["sd1", "sd1_inpaint", "sdxl"])
def test_single_file_loads_bit_identical_to_its_folder(cache: ModelCache, tiny_models, key: str) -> None:
    folder_pipeline, folder_info = cache.base_pipeline(str(tiny_models[key]))
    file_pipeline, file_info = cache.base_pipeline(str(tiny_models[f"{key}_single"]))
    components = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if key == "sdxl" else [])
    for component in components:
        _assert_same_weights(getattr(folder_pipeline, component), getattr(file_pipeline, component))
    assert type(folder_pipeline) is type(file_pipeline)
    assert type(folder_pipeline.scheduler) is type(file_pipeline.scheduler)
    if key != "sdxl":
        assert folder_pipeline.safety_checker is None and file_pipeline.safety_checker is None
    family, variant = ("sdxl", "base") if key == "sdxl" else ("sd1", "inpaint" if "inpaint" in key else "base")
    for info, kind in ((folder_info, "folder"), (file_info, "single_file")):
        assert (info.kind, info.family, info.variant, info.prediction) == (kind, family, variant, "epsilon")
    assert folder_info.hash is None
    expected_hash = hashlib.sha256(tiny_models[f"{key}_single"].read_bytes()).hexdigest()[:10]
    assert file_info.hash == expected_hash
    assert file_info.name == f"tiny_{key}"
    if key != "sd1_inpaint":
        assert np.array_equal(_generate(folder_pipeline), _generate(file_pipeline))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_controlnet_single_file_equals_its_folder(cache: ModelCache, tiny_models, family: str) -> None:
    folder = cache.controlnet(str(tiny_models[f"{family}_controlnet"]))
    single = cache.controlnet(str(tiny_models[f"{family}_controlnet_single"]))
    _assert_same_weights(folder, single)


def test_the_same_source_returns_the_same_objects_until_unloaded(tiny_models) -> None:
    cache = ModelCache(CPU)
    pipeline, _ = cache.base_pipeline(str(tiny_models["sd1"]))
    assert cache.base_pipeline(str(tiny_models["sd1"]))[0] is pipeline
    controlnet = cache.controlnet(str(tiny_models["sd1_controlnet"]))
    assert cache.controlnet(str(tiny_models["sd1_controlnet"])) is controlnet
    assert pipeline.unet.dtype == torch.float32 and pipeline.device.type == "cpu"
    cache.unload()
    assert cache.base_pipeline(str(tiny_models["sd1"]))[0] is not pipeline
    assert cache.controlnet(str(tiny_models["sd1_controlnet"])) is not controlnet


def test_a_pickled_checkpoint_is_refused_without_being_unpickled(tiny_models, tmp_path: Path) -> None:
    marker = tmp_path / "pickle-code-ran"
    checkpoint = write_pickle_checkpoint(tiny_models["sd1"], tmp_path / "model.ckpt", marker)
    with pytest.raises(UnsafeModelError, match=r"'model.ckpt' is a pickled checkpoint .*can run arbitrary code"):
        ModelCache(CPU).base_pipeline(str(checkpoint))
    assert not marker.exists()


def test_a_pickled_checkpoint_loads_when_allowed(cache: ModelCache, tiny_models, tmp_path: Path) -> None:
    marker = tmp_path / "pickle-code-ran"
    checkpoint = write_pickle_checkpoint(tiny_models["sd1"], tmp_path / "model.ckpt", marker)
    pipeline, info = ModelCache(EngineSettings(device="cpu", allow_unsafe_pickle=True)).base_pipeline(str(checkpoint))
    assert marker.exists()  # the trap proves the file really was unpickled, as the artist allowed
    assert (info.kind, info.family, info.name) == ("single_file", "sd1", "model")
    _assert_same_weights(pipeline.unet, cache.base_pipeline(str(tiny_models["sd1"]))[0].unet)


def test_a_hub_id_that_is_not_downloaded_needs_the_network() -> None:
    with pytest.raises(ModelError, match=r"is not downloaded and network access is off .*Online Access"):
        ModelCache(CPU).base_pipeline("someone/not-a-downloaded-model")


@pytest.mark.parametrize("source", ["missing.safetensors", "models/missing.safetensors", "not a model"])
def test_an_unknown_source_is_not_found(source: str) -> None:
    with pytest.raises(ModelError, match="Model not found"):
        ModelCache(CPU).base_pipeline(source)


def test_a_folder_that_is_no_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="neither a diffusers model folder"):
        ModelCache(CPU).base_pipeline(str(tmp_path))


@pytest.mark.parametrize("key", ["sd1_controlnet", "sd1_controlnet_single"])
def test_a_controlnet_is_refused_where_a_model_is_expected(tiny_models, key: str) -> None:
    with pytest.raises(ModelError, match="is a ControlNet, but a Stable Diffusion model is expected"):
        ModelCache(CPU).base_pipeline(str(tiny_models[key]))


@pytest.mark.parametrize("key", ["sd1", "sd1_single"])
def test_a_model_is_refused_where_a_controlnet_is_expected(tiny_models, key: str) -> None:
    with pytest.raises(ModelError, match="is a Stable Diffusion model, but a ControlNet is expected"):
        ModelCache(CPU).controlnet(str(tiny_models[key]))


def test_a_corrupt_single_file_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(ModelError, match=r"not a valid \.safetensors file"):
        ModelCache(CPU).base_pipeline(str(path))


def test_a_hub_id_already_in_the_hf_cache_loads_offline(tiny_models, tmp_path: Path, monkeypatch) -> None:
    import shutil

    from huggingface_hub import constants

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--tiny--sd1"
    shutil.copytree(tiny_models["sd1"], repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    pipeline, info = ModelCache(CPU).base_pipeline("tiny/sd1")
    assert (info.kind, info.name, info.family, info.hash) == ("hub", "tiny/sd1", "sd1", None)
    assert pipeline.unet.config.cross_attention_dim == 32


def test_hub_downloads_fetch_only_the_needed_weights() -> None:
    from sd_core.models.sources import pick_weight_files

    files = [
        "v1-5-pruned.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.bin",
        "text_encoder/pytorch_model.bin",
    ]
    assert pick_weight_files(files, "unet") == ["unet/diffusion_pytorch_model.fp16.safetensors"]
    assert pick_weight_files(files, "vae") == ["vae/diffusion_pytorch_model.safetensors"]
    assert pick_weight_files(files, "text_encoder") == ["text_encoder/pytorch_model.bin"]
    assert pick_weight_files(files, "") == ["v1-5-pruned.safetensors"]


def test_with_network_a_hub_pipeline_downloads_only_its_components(tiny_models, monkeypatch) -> None:
    """The hub is unreachable here, so the download is simulated; the requested patterns are what matters."""
    import huggingface_hub

    requested = {}

    def fake_snapshot_download(repo_id: str, allow_patterns: list[str]) -> str:
        requested.update(repo_id=repo_id, patterns=allow_patterns)
        return str(tiny_models["sd1"])

    files = ["model_index.json", "v1-5-pruned.safetensors", "unet/diffusion_pytorch_model.safetensors"]
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id: files)
    online = ModelCache(EngineSettings(device="cpu", allow_network=True))
    _, info = online.base_pipeline("owner/model")
    assert (info.kind, info.name, info.family) == ("hub", "owner/model", "sd1")
    assert requested["repo_id"] == "owner/model"
    assert "unet/diffusion_pytorch_model.safetensors" in requested["patterns"]
    assert "v1-5-pruned.safetensors" not in requested["patterns"]
    assert "safety_checker/*.json" not in requested["patterns"]
