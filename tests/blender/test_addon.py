"""The add-on in real Blender: registration, panels, the job flow end to end, and bad input."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import addon_utils
import bpy
import numpy as np
import pytest
from PIL import Image

from sd_core.errors import SDCoreError
from sd_core.request import EngineSettings

ADDON = "blender_addon"
CPU = EngineSettings(device="cpu")
# The tiny SD1 UNet's first self-attention query: a 32x32 weight, in kohya's naming.
LORA_LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


def write_tiny_lora(path: Path, width: int = 32) -> Path:
    """A rank-2 kohya LoRA on ``LORA_LAYER``; another ``width`` makes one for a model with other layer sizes."""
    from sd_core.testing.loras import random_updates, write_kohya_lora

    return write_kohya_lora(path, random_updates({("unet", LORA_LAYER): (width, width)}, rank=2), alpha=2.0)


@pytest.fixture
def addon(scene):
    """The add-on enabled the way Blender enables it (after the factory reset, which disables add-ons)."""
    addon_utils.enable(ADDON, default_set=True)
    yield sys.modules[ADDON]
    addon_utils.disable(ADDON, default_set=True)


@pytest.fixture
def still_life(addon, build, tiny_models, tmp_path):
    """A camera over two quads, the front one selected; settings pointing at the tiny models."""
    build.camera(location=(0.0, 0.0, 10.0))
    back = build.quad(
        "Back", [(-3, -3, 0), (3, -3, 0), (3, 3, 0), (-3, 3, 0)], build.emission_material("B", (0.2,) * 3)
    )
    front = build.quad(
        "Front", [(-1, -1, 2), (1, -1, 2), (1, 1, 2), (-1, 1, 2)], build.emission_material("F", (0.8,) * 3)
    )
    for obj in (back, front):
        obj.select_set(False)
    front.select_set(True)
    bpy.context.view_layer.objects.active = front
    settings = bpy.context.scene.sd_settings
    settings.model = str(tiny_models["sd1_single"])
    settings.depth_model = str(tiny_models["sd1_controlnet"])
    settings.prompt = "a bronze plaque"
    settings.steps = 2
    settings.random_seed = False
    settings.seed = 5
    settings.output_dir = str(tmp_path) + "/"
    return SimpleNamespace(front=front, back=back, settings=settings, out=tmp_path)


def _run(addon_module, settings=CPU):
    generation = sys.modules[f"{ADDON}.generation"]
    job = generation.submit(bpy.context, settings)
    generation.runner(settings).wait(job, timeout=120)
    return generation, job


def test_register_and_unregister_leave_nothing_behind(scene):
    path_before = list(sys.path)
    addon_utils.enable(ADDON, default_set=True)
    assert hasattr(bpy.types.Scene, "sd_settings")
    assert hasattr(bpy.types, "SD_PT_main")
    assert "generate" in dir(bpy.ops.sd)
    addon_utils.disable(ADDON, default_set=True)
    assert not hasattr(bpy.types.Scene, "sd_settings")
    assert not hasattr(bpy.types.Scene, "sd_history")
    assert not hasattr(bpy.types.Scene, "sd_multiview")
    assert not hasattr(bpy.types, "SD_PT_multiview")
    assert not hasattr(bpy.types.WindowManager, "sd_status")
    assert not hasattr(bpy.types, "SD_PT_main")
    assert sys.path == path_before


class RecordingLayout:
    """Stands in for a UILayout headlessly: records every call and checks every property drawn exists."""

    def __init__(self, calls: list) -> None:
        self.calls = calls

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            if name in ("prop", "template_ID", "template_ID_preview") and len(args) >= 2:
                data, prop = args[0], args[1]
                assert prop in data.bl_rna.properties, f"{type(data).__name__} has no property {prop!r}"
            return RecordingLayout(self.calls)

        return record


@pytest.mark.parametrize("panel", ["SD_PT_main", "SD_PT_sampling", "SD_PT_loras", "SD_PT_control", "SD_PT_history"])
@pytest.mark.parametrize("mode", ["TXT2IMG", "IMG2IMG", "INPAINT"])
def test_panels_draw_every_mode(addon, panel, mode):
    settings = bpy.context.scene.sd_settings
    settings.mode = mode
    settings.source = "IMAGE"
    settings.size_from_render = False
    settings.project_to_selected = True
    calls: list = []
    getattr(bpy.types, panel).draw(SimpleNamespace(layout=RecordingLayout(calls)), bpy.context)
    assert calls


class PreferencesProxy:
    """The real preferences with a recording layout, as Blender passes ``self`` to ``draw``."""

    def __init__(self, preferences, layout) -> None:
        self.layout = layout
        self._preferences = preferences

    def __getattr__(self, name):
        return getattr(self._preferences, name)


def test_preferences_draw_and_map_to_engine_settings(addon):
    preferences = bpy.context.preferences.addons[ADDON].preferences
    preferences.device, preferences.dtype, preferences.cpu_offload = "cpu", "bfloat16", True
    calls: list = []
    type(preferences).draw(PreferencesProxy(preferences, RecordingLayout(calls)), bpy.context)
    assert any(call[0] == "operator" and call[1][0] == "sd.install_dependencies" for call in calls)
    settings = preferences.engine_settings()
    assert (settings.device, settings.dtype, settings.cpu_offload) == ("cpu", "bfloat16", True)
    assert settings.allow_network == bool(bpy.app.online_access)


def test_dependency_check_reports_the_device(addon):
    state = sys.modules[f"{ADDON}.dependency_panel"].check_now()
    assert state.ok, state.problems
    assert state.device.startswith("cpu")
    assert {package.name for package in state.packages} >= {"torch", "diffusers", "transformers"}


def test_generate_writes_a_new_image_png_and_history(still_life):
    generation, job = _run(still_life)
    assert job.state == "done", job.error
    images = generation.apply_finished(job)
    (image,) = images
    assert image.name.startswith("SD a bronze plaque 5")
    assert image["sd_seed"] == 5 and image["sd_prompt"] == "a bronze plaque"
    assert json.loads(image["sd_parameters"])["controlnets"][0]["model"] == still_life.settings.depth_model
    png = Path(bpy.path.abspath(image.filepath))
    assert png.parent == still_life.out
    with Image.open(png) as file:
        assert "Seed: 5" in file.text["parameters"]
        assert file.size == (96, 72)
    scene = bpy.context.scene
    assert scene.sd_history[-1].image == image
    assert still_life.settings.last_result == image


def test_projecting_onto_the_selection_runs_on_the_worker(still_life, monkeypatch):
    """The Generate button's projection: mesh data read when planning, the numpy work on the worker thread
    (seconds at 2048² that the UI must not wait on), the new texture wired in on the main thread."""
    bake = sys.modules[f"{ADDON}.bake"]
    threads, encoders = [], []
    project, encode = bake.project_textures, bake.png_bytes
    monkeypatch.setattr(
        bake,
        "project_textures",
        lambda *args, **kwargs: threads.append(threading.current_thread()) or project(*args, **kwargs),
    )
    monkeypatch.setattr(bake, "png_bytes", lambda rgba: encoders.append(threading.current_thread()) or encode(rgba))
    still_life.settings.project_to_selected = True
    still_life.settings.bake_resolution = 64
    generation, job = _run(still_life)
    assert job.state == "done", job.error
    assert threads and threads[0] is not threading.main_thread()
    assert encoders and threading.main_thread() not in encoders  # the texture's PNG too
    assert bpy.data.images.get(f"Front {bake.NODE_LABEL}") is None  # nothing changed before write-back
    generation.apply_finished(job)
    assert len(encoders) == 1  # Blender packs the data as it is
    texture = bpy.data.images[f"Front {bake.NODE_LABEL}"]
    assert tuple(texture.size) == (64, 64)
    material = still_life.front.material_slots[0].material
    assert any(getattr(node, "image", None) == texture for node in material.node_tree.nodes)
    assert bpy.data.images.get(f"Back {bake.NODE_LABEL}") is None  # not selected: untouched


def test_the_worker_writes_the_pngs_and_blender_only_loads_them(still_life, monkeypatch):
    """Encoding a PNG takes about 0.1 s at 1024², 1.6 s for 16 variations: on the worker, never the UI's."""
    writeback = sys.modules[f"{ADDON}.writeback"]
    threads = []
    save = writeback.save_png
    monkeypatch.setattr(writeback, "save_png", lambda *args: threads.append(threading.current_thread()) or save(*args))
    still_life.settings.batch_size = 2
    generation, job = _run(still_life)
    assert job.state == "done", job.error
    assert len(threads) == 2 and threading.main_thread() not in threads
    written = sorted(still_life.out.glob("*.png"))
    assert len(written) == 2  # on disk before the main thread looked at the job
    images = generation.apply_finished(job)
    assert len(threads) == 2  # nothing encoded again
    assert sorted(Path(bpy.path.abspath(image.filepath)) for image in images) == written
    assert all(tuple(image.size) == (96, 72) for image in images)


def test_a_png_the_worker_could_not_write_is_written_and_reported_by_blender(still_life, monkeypatch):
    """A folder that refuses the worker (here: once) loses nothing: the main thread writes the image itself."""
    writeback = sys.modules[f"{ADDON}.writeback"]
    save = writeback.save_png
    refusals = []

    def refuse_once(*args):
        if not refusals:
            refusals.append(threading.current_thread())
            raise PermissionError("read-only folder")
        return save(*args)

    monkeypatch.setattr(writeback, "save_png", refuse_once)
    generation, job = _run(still_life)
    assert job.state == "done", job.error
    (image,) = generation.apply_finished(job)
    assert refusals[0] is not threading.main_thread()
    assert Path(bpy.path.abspath(image.filepath)).is_file()


def test_history_restores_the_settings_that_made_an_image(still_life):
    settings = still_life.settings
    lora_rows = [(str(write_tiny_lora(still_life.out / "moss.safetensors")), 0.5, True), ("//unused.pt", -1.0, False)]
    for row in lora_rows:
        item = settings.loras.add()
        item.path, item.scale, item.enabled = row
    generation, job = _run(still_life)
    assert job.state == "done", job.error
    # the artist edits the panel while the image is made: the history keeps what Generate was clicked with
    settings.prompt, settings.steps, settings.seed = "something else", 9, 77
    settings.loras.clear()
    settings.loras.add().path = "//other.safetensors"
    generation.apply_finished(job)
    bpy.ops.sd.restore_history(index=0)
    assert (settings.prompt, settings.steps, settings.seed) == ("a bronze plaque", 2, 5)
    assert [(item.path, item.scale, item.enabled) for item in settings.loras] == lora_rows
    bpy.ops.sd.apply_preset(preset="FAST_DRAFT")  # a preset sets up a task and keeps the artist's LoRAs
    assert [(item.path, item.scale, item.enabled) for item in settings.loras] == lora_rows


def test_the_lora_list_adds_removes_and_draws_its_rows(addon):
    settings = bpy.context.scene.sd_settings
    assert not bpy.ops.sd.lora_remove.poll()  # nothing to remove yet
    for _ in range(3):
        assert bpy.ops.sd.lora_add() == {"FINISHED"}
    assert (len(settings.loras), settings.lora_index) == (3, 2)
    assert (settings.loras[0].scale, settings.loras[0].enabled) == (1.0, True)  # as trained, on
    settings.loras[1].path = "//middle.safetensors"
    settings.lora_index = 1
    bpy.ops.sd.lora_remove()
    assert len(settings.loras) == 2 and all(item.path != "//middle.safetensors" for item in settings.loras)
    assert settings.lora_index == 1  # the row that took its place
    bpy.ops.sd.lora_remove()
    assert settings.lora_index == 0  # the last row went: its neighbour above is active
    calls: list = []
    bpy.types.SD_UL_loras.draw_item(None, bpy.context, RecordingLayout(calls), settings, settings.loras[0], 0, None, "")
    assert [call[1][1] for call in calls if call[0] == "prop"] == ["enabled", "path", "scale"]


def test_the_panels_ticked_loras_reach_the_request(still_life, tmp_path):
    """Rows with a file that are ticked, in list order, with their scales; '//' is the .blend's folder."""
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
    (tmp_path / "loras").mkdir()
    moss, rust = tmp_path / "loras" / "moss.safetensors", tmp_path / "rust.safetensors"
    moss.touch()
    rust.touch()
    settings = bpy.context.scene.sd_settings
    for path, scale, enabled in [
        ("//loras/moss.safetensors", 0.5, True),
        (str(rust), -1.5, False),
        ("  ", 1.0, True),
        (str(rust), 1.25, True),
    ]:
        item = settings.loras.add()
        item.path, item.scale, item.enabled = path, scale, enabled
    plan = sys.modules[f"{ADDON}.generation"].plan_generation(bpy.context)
    assert [(Path(lora.path), lora.scale) for lora in plan.request.loras] == [(moss, 0.5), (rust, 1.25)]
    assert all(Path(lora.path).is_absolute() for lora in plan.request.loras)  # the worker has no .blend


def test_a_lora_for_another_model_fails_the_job_with_its_reason(still_life):
    """Read on the worker: the job fails with a message naming the file, and nothing is written back."""
    item = still_life.settings.loras.add()
    item.path = str(write_tiny_lora(still_life.out / "sdxl_style.safetensors", width=64))
    images_before = len(bpy.data.images)
    generation, job = _run(still_life)
    assert job.state == "failed"
    assert "'sdxl_style.safetensors' does not fit this model" in job.error
    assert generation.apply_finished(job) == []
    assert len(bpy.data.images) == images_before and len(bpy.context.scene.sd_history) == 0


def test_results_never_replace_the_users_images(still_life):
    mine = bpy.data.images.new("SD a bronze plaque 5", 4, 4)
    mine.pixels.foreach_set(np.full(64, 0.25, np.float32))
    mine_pixels = np.array(mine.pixels[:])
    generation, job = _run(still_life)
    (image,) = generation.apply_finished(job)
    assert image != mine and mine.name == "SD a bronze plaque 5"
    assert np.array_equal(np.array(mine.pixels[:]), mine_pixels)


def test_inpainting_the_selection_keeps_everything_else(still_life):
    still_life.settings.mode = "INPAINT"
    still_life.settings.strength = 1.0
    still_life.settings.mask_grow = 0
    still_life.settings.mask_feather = 0
    generation = sys.modules[f"{ADDON}.generation"]
    plan = generation.plan_generation(bpy.context)
    assert plan.request.mask is not None and 0 < plan.request.mask.mean() < 0.5
    job = generation.runner(CPU).submit(plan.request, context={"plan": plan})
    generation.runner(CPU).wait(job, timeout=120)
    pixels = job.result.images[0].pixels
    outside = plan.request.mask == 0
    assert np.array_equal(pixels[outside], plan.request.image[outside])


def test_cancel_stops_the_job_and_writes_nothing(still_life):
    still_life.settings.steps = 50
    generation = sys.modules[f"{ADDON}.generation"]
    images_before = len(bpy.data.images)
    job = generation.submit(bpy.context, CPU)
    generation.runner(CPU).cancel(job)
    generation.runner(CPU).wait(job, timeout=120)
    assert job.state == "cancelled"
    assert generation.apply_finished(job) == []
    assert len(bpy.data.images) == images_before


@pytest.mark.parametrize(
    ("break_scene", "message"),
    [
        (lambda s: setattr(bpy.context.scene, "camera", None), "camera"),
        (lambda s: setattr(s.settings, "model", ""), "No model is configured"),
        (lambda s: s.front.select_set(False) or setattr(s.settings, "mode", "INPAINT"), "Select the mesh"),
        (lambda s: setattr(s.settings, "depth_model", ""), "no depth model"),
        (lambda s: setattr(s.settings.loras.add(), "path", str(s.out / "gone.safetensors")), "LoRA not found.*gone"),
    ],
    ids=["no-camera", "no-model", "nothing-selected", "no-depth-model", "missing-lora"],
)
def test_bad_input_reports_clearly_and_leaves_the_scene_intact(still_life, break_scene, message):
    break_scene(still_life)
    objects_before = sorted(obj.name for obj in bpy.data.objects)
    materials_before = sorted(mat.name for mat in bpy.data.materials)
    with pytest.raises(RuntimeError, match=message):
        bpy.ops.sd.generate()
    assert sorted(obj.name for obj in bpy.data.objects) == objects_before
    assert sorted(mat.name for mat in bpy.data.materials) == materials_before


def test_a_selected_non_mesh_is_named_in_the_error(still_life):
    light = bpy.data.objects.new("Lamp", bpy.data.lights.new("Lamp", "POINT"))
    bpy.context.scene.collection.objects.link(light)
    light.select_set(True)
    still_life.settings.mode = "INPAINT"
    generation = sys.modules[f"{ADDON}.generation"]
    with pytest.raises(SDCoreError, match=r"Only meshes.*Lamp"):
        generation.plan_generation(bpy.context)


def test_the_generate_button_path_polls_previews_and_results_in(still_life, monkeypatch):
    """What the UI timer does, driven by hand (timers never tick in background mode)."""
    operators = sys.modules[f"{ADDON}.operators"]
    statuses = []
    show_status = operators._status
    monkeypatch.setattr(
        operators, "_status", lambda text, fraction=0.0: (statuses.append(text), show_status(text, fraction))
    )
    preferences = bpy.context.preferences.addons[ADDON].preferences
    preferences.device = "cpu"
    assert bpy.ops.sd.generate() == {"FINISHED"}
    wm = bpy.context.window_manager
    deadline = time.monotonic() + 120
    while operators.poll_jobs() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    # Before the first step the artist learns that work started (model loading, GPU preparation).
    assert statuses.index(operators.STARTED_STATUS) < next(
        i for i, text in enumerate(statuses) if text.startswith("Step")
    )
    assert wm.sd_status.startswith("Done: SD a bronze plaque 5"), wm.sd_status
    assert still_life.settings.last_result is not None
    preview = bpy.data.images["SD Preview"]
    assert tuple(preview.size) == (96 // 8, 72 // 8)
    assert not preview.packed_file


def test_the_viewport_source_plans_from_the_viewports_view(still_life):
    still_life.settings.source = "VIEWPORT"
    area = next(area for area in bpy.context.window.screen.areas if area.type == "VIEW_3D")
    area.spaces.active.region_3d.view_perspective = "PERSP"
    plan = sys.modules[f"{ADDON}.generation"].plan_generation(bpy.context)
    height, width = plan.request.image.shape[:2]
    assert max(width, height) == 96  # the render's long side
    assert plan.request.controls and plan.camera_capture.camera.width == width


def test_the_models_folder_is_scanned_by_content_not_name(addon, tiny_models, tmp_path):
    import shutil

    shutil.copy(tiny_models["sd1_single"], tmp_path / "controlnet_looking_name.safetensors")
    shutil.copy(tiny_models["sd1_controlnet_single"], tmp_path / "my_model.safetensors")
    shutil.copytree(tiny_models["sd1"], tmp_path / "a diffusers folder")
    (tmp_path / "notes.txt").write_text("not a model")
    preferences = bpy.context.preferences.addons[ADDON].preferences
    preferences.models_dir = str(tmp_path)
    preferences.hub_models = "owner/some-model"
    preferences_module = sys.modules[f"{ADDON}.preferences"]
    pipelines = preferences_module.known_models(bpy.context, "pipeline")
    controlnets = preferences_module.known_models(bpy.context, "controlnet")
    names = [Path(entry).name for entry in pipelines]
    assert names == ["a diffusers folder", "controlnet_looking_name.safetensors", "some-model"]
    assert [Path(entry).name for entry in controlnets] == ["my_model.safetensors", "control_v11f1p_sd15_depth"]


def test_headless_command_textures_and_saves_a_copy(still_life, tiny_models, tmp_path):
    from blender_addon import headless

    blend = tmp_path / "input.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    before = blend.read_bytes()
    common = ["--blend", str(blend), "--model", str(tiny_models["sd1_single"]), "--prompt", "rust", "--steps", "2"]
    out, saved = tmp_path / "renders", tmp_path / "textured.blend"
    control = ["--controlnet", str(tiny_models["sd1_controlnet"]), "--select", "Front", "--project"]
    where = ["--texture-size", "64", "--seed", "9", "--out", str(out), "--save-as", str(saved), "--device", "cpu"]
    code = headless.main([*common, *control, *where, "--capture-samples", "1"])
    assert code == 0
    assert bpy.context.scene.sd_settings.capture_samples == 1
    assert [p.name for p in out.iterdir()] == ["SD_rust_9.png"]
    assert saved.is_file() and blend.read_bytes() == before
    assert headless.main([*common, "--out", str(out), "--save-as", str(blend)]) == 2
    assert headless.main([*common, "--select", "Nope", "--out", str(out)]) == 2
    with pytest.raises(SystemExit) as refused:  # argparse's one line and exit code
        headless.main([*common, "--out", str(out), "--capture-samples", "-1"])
    assert refused.value.code == 2


@pytest.mark.usefixtures("still_life")  # not an argument: opening the .blend frees its objects, which a report reprs
def test_headless_lora_changes_the_image_and_is_recorded(tiny_models, tmp_path, capsys):
    """``--lora PATH:SCALE`` fills the panel's list, so it plans like the Generate button; the same seed without it
    gives another image, and the PNG names the LoRA as A1111 does."""
    from blender_addon import headless

    blend = tmp_path / "input.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    moss = write_tiny_lora(tmp_path / "moss.safetensors")
    common = ["--blend", str(blend), "--model", str(tiny_models["sd1_single"]), "--prompt", "rust", "--steps", "2"]
    common += ["--seed", "9", "--device", "cpu", "--capture-samples", "1"]
    assert headless.main([*common, "--out", str(tmp_path / "with"), "--lora", f"{moss}:0.5"]) == 0
    settings = bpy.context.scene.sd_settings
    assert [(item.path, item.scale, item.enabled) for item in settings.loras] == [(str(moss), 0.5, True)]
    recorded = json.loads(settings.last_result["sd_parameters"])["loras"]
    assert recorded == [{"name": "moss", "path": str(moss), "scale": 0.5}]
    assert headless.main([*common, "--out", str(tmp_path / "without")]) == 0
    (with_lora,), (without,) = (list((tmp_path / folder).glob("*.png")) for folder in ("with", "without"))
    with Image.open(with_lora) as file:
        assert file.text["parameters"].split("\n")[0] == "rust <lora:moss:0.5>"
        pixels_with = np.asarray(file.convert("RGB"), dtype=np.int16)
    with Image.open(without) as file:
        assert "<lora:" not in file.text["parameters"]
        pixels_without = np.asarray(file.convert("RGB"), dtype=np.int16)
    assert np.abs(pixels_with - pixels_without).mean() > 0.25  # 1.2 of 255 measured; the same image gives 0
    missing = str(tmp_path / "nope.safetensors")
    assert headless.main([*common, "--out", str(tmp_path / "never"), "--lora", missing]) == 2
    assert f"LoRA not found: '{missing}'" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    ("mode", "capture_samples", "rendered_with"), [("IMG2IMG", 2, 2), ("IMG2IMG", 0, 3), ("TXT2IMG", 2, 1)]
)
def test_the_capture_renders_with_its_own_sample_count(still_life, mode, capture_samples, rendered_with):
    """A scene set up for a 4096-sample final render is captured in a moment (depth and masks are exact at any
    count); 0 keeps the scene's own count; txt2img, which uses no colour, takes one. The scene's setting is left
    as it was."""
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 4096 if capture_samples else 3
    still_life.settings.mode = mode
    still_life.settings.capture_samples = capture_samples
    seen: list[int] = []
    record = lambda scene, *_: seen.append(scene.cycles.samples)  # noqa: E731
    bpy.app.handlers.render_pre.append(record)
    try:
        sys.modules[f"{ADDON}.generation"].plan_generation(bpy.context)
    finally:
        bpy.app.handlers.render_pre.remove(record)
    assert seen == [rendered_with]
    assert scene.cycles.samples == (4096 if capture_samples else 3)


@pytest.mark.parametrize("engine", ["BLENDER_EEVEE", "BLENDER_WORKBENCH"])
def test_other_engines_project_and_eevee_inpaints_the_selection(still_life, engine):
    """Projecting needs only depth, which every engine renders; inpainting the selection needs a mask of it:
    Cycles' Object Index or EEVEE's Cryptomatte, and Workbench is told so."""
    bpy.context.scene.render.engine = engine
    generation = sys.modules[f"{ADDON}.generation"]
    still_life.settings.project_to_selected = True
    plan = generation.plan_generation(bpy.context)
    assert [surface.object_name for surface in plan.surfaces] == ["Front"]
    still_life.settings.project_to_selected = False
    still_life.settings.mode = "INPAINT"
    if engine == "BLENDER_WORKBENCH":
        with pytest.raises(SDCoreError, match="Cycles or EEVEE"):
            generation.plan_generation(bpy.context)
    else:
        mask = generation.plan_generation(bpy.context).request.mask
        assert mask is not None and 0.05 < mask.mean() < 0.5  # the front quad, not the back one
