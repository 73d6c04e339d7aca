"""Multi-view texturing in real Blender: ring cameras, Cycles conditioning renders, bake, re-render, compare.

Unlit emission materials, the Standard view transform and a tiny pixel filter make a re-rendered pixel
show exactly the texture value under it, so the baked result can be checked against each view's final
image. The fake generators (``tests.multiview_fakes``) paint views from world position, so a consistent
answer exists; the tiny diffusion models then run the same path end to end (their pictures are noise).
"""

from __future__ import annotations

import numpy as np
import pytest

from blender_addon import multiview
from blender_addon.capture import capture_camera
from sd_core.multiview import last_view_wins, seam_score
from tests.blender.conftest import SceneBuilder, bpy
from tests.multiview_fakes import consistent_generator, inconsistent_generator, independent

VIEW_SIZE = 64
TEXTURE_SIZE = 128
TOLERANCE = 0.05  # 8-bit texture, texel filtering and 64-pixel views of curved surfaces


def eroded(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    height, width = mask.shape
    return np.all([padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)], axis=0)


@pytest.fixture
def pair(scene, build: SceneBuilder) -> list[bpy.types.Object]:
    """A cube and a UV sphere side by side (both with their primitive UVs), unlit mid grey, selected."""
    scene.cycles.filter_width = 0.01
    grey = build.emission_material("Grey", (0.21404114,) * 3)
    bpy.ops.mesh.primitive_cube_add(size=1.6, location=(-1.1, 0.0, 0.0))
    cube = bpy.context.active_object
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.9, segments=24, ring_count=12, location=(1.0, 0.3, 0.1))
    sphere = bpy.context.active_object
    bpy.ops.object.shade_smooth()
    for obj in (cube, sphere):
        obj.data.materials.append(grey)
    return [cube, sphere]


def plan_for(scene, objects, count: int = 4, top: bool = True):
    cameras = multiview.ring_cameras(scene, objects, count=count, elevation_degrees=25.0, top=top)
    return multiview.plan_multiview(scene, objects, cameras, size=VIEW_SIZE, texture_size=TEXTURE_SIZE)


def rerender(scene, camera_name: str) -> np.ndarray:
    with multiview._rendering_as(scene, VIEW_SIZE):
        scene.camera = bpy.data.objects[camera_name]
        return capture_camera(scene).color


def test_ring_cameras_are_real_objects_around_the_selection(scene, pair) -> None:
    cameras = multiview.ring_cameras(scene, pair, count=6, elevation_degrees=20.0, top=True, bottom=True)
    collection = bpy.data.collections[multiview.CAMERA_COLLECTION]
    assert [camera.name for camera in cameras] == [f"SD View {n:02d}" for n in range(1, 9)]
    assert set(collection.objects) == set(cameras) and all(camera.type == "CAMERA" for camera in cameras)
    again = multiview.ring_cameras(scene, pair, count=3)  # a re-run replaces the ring, it does not pile up
    assert set(bpy.data.collections[multiview.CAMERA_COLLECTION].objects) == set(again)
    plan = multiview.plan_multiview(scene, pair, again, size=VIEW_SIZE, texture_size=64)
    for view in plan.views:  # every camera frames both objects
        assert {1, 2} <= set(np.unique(view.labels))
        labelled = np.flatnonzero(view.labels.any(axis=0))
        assert labelled.min() > 0 and labelled.max() < VIEW_SIZE - 1


def test_consistent_views_cover_every_seen_texel_and_reproject_exactly(scene, pair) -> None:
    plan = plan_for(scene, pair)
    result = multiview.run_multiview(plan, consistent_generator)
    textures = multiview.apply_multiview(plan, result)
    for fused in result.textures:
        assert (fused.painted == fused.seen).all()  # coverage of seen texels: 100 %
        assert fused.color.min() > 0.05  # the filled rest is never black
    assert [t.object_name for t in textures] == ["Cube", "Sphere"]
    assert all(t.materials for t in textures) and all(t.seen_fraction > 0.6 for t in textures)

    fractions = []
    for camera_name, final, view in zip(plan.camera_names, result.view_images, plan.views, strict=True):
        rendered = rerender(scene, camera_name)
        visible = eroded(view.labels > 0)
        error = np.abs(rendered - final).max(axis=-1)[visible]
        fractions.append(float(np.mean(error < TOLERANCE)))
    print(f"reprojection: fraction of visible pixels within {TOLERANCE}: {np.round(fractions, 3).tolist()}")
    assert min(fractions) > 0.95


def test_no_object_paints_another(scene, pair) -> None:
    plan = plan_for(scene, pair)
    views_by_camera = {id(view.camera): view for view in plan.views}

    def by_object(task):
        labels = views_by_camera[id(task.camera)].labels
        colors = np.array([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)[labels]
        return np.where(task.soft_mask[..., None] > 0, colors, task.image).astype(np.float32)

    cube, sphere = multiview.run_multiview(plan, by_object).textures
    assert cube.color[cube.painted][:, 1].max() < 0.02  # no green on the cube
    assert sphere.color[sphere.painted][:, 0].max() < 0.02  # no red on the sphere


def test_fused_seams_are_weaker_than_last_view_wins(scene, pair) -> None:
    plan = plan_for(scene, pair)
    ours = multiview.run_multiview(plan, inconsistent_generator).textures
    naive_views = multiview.run_multiview(plan, independent(inconsistent_generator)).view_images
    naive = last_view_wins(plan.surfaces, plan.views, naive_views)
    scores = [
        (seam_score(mine, [theirs.owner]), seam_score(theirs, [mine.owner]))
        for mine, theirs in zip(ours, naive, strict=True)
    ]
    print(f"seam score (ours, last view wins) per object: {np.round(scores, 4).tolist()}")
    (cube_ours, cube_naive), (sphere_ours, sphere_naive) = scores
    assert sphere_ours < 0.5 * sphere_naive  # smooth surface: region borders fade instead of cutting
    # On the cube both methods' region borders sit on its creases (each face belongs to its most
    # head-on view) and a fake generator cannot harmonise the two sides as a real model does: no worse.
    assert cube_ours < 1.1 * cube_naive


def test_headless_command_with_the_tiny_models(scene, pair, tiny_models, tmp_path, capsys, monkeypatch) -> None:
    """The whole loop through the engine: depth-ControlNet inpainting per view, baked and saved."""
    from blender_addon import multiview_headless

    blend = tmp_path / "pair.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    out = tmp_path / "out"
    arguments = [
        "--blend", str(blend), "--model", str(tiny_models["sd1"]),
        "--controlnet", str(tiny_models["sd1_controlnet"]),
        "--prompt", "a bronze statue", "--select", "Cube", "--select", "Sphere", "--count", "3", "--top",
        "--size", str(VIEW_SIZE), "--texture-size", "64", "--steps", "2", "--device", "cpu",
        "--out", str(out), "--save-as", str(tmp_path / "textured.blend"),
    ]  # fmt: skip
    assert multiview_headless.main(arguments) == 0
    assert sorted(path.name for path in out.iterdir()) == [
        "Cube_texture.png",
        "Sphere_texture.png",
        *[f"view_{n:02d}_SD_View_{n:02d}.png" for n in range(1, 5)],
    ]
    assert (tmp_path / "textured.blend").is_file()
    with pytest.raises(SystemExit) as refused:  # argparse's one line and exit code, before anything opens
        multiview_headless.main(
            ["--blend", str(blend), "--model", "m", "--prompt", "p", "--select", "Cube", "--samples", "-2"]
        )
    assert refused.value.code == 2
    for name in ("Cube", "Sphere"):
        image = bpy.data.images[f"{name} {multiview.TEXTURE_LABEL}"]
        pixels = np.empty(64 * 64 * 4, np.float32)
        image.pixels.foreach_get(pixels)
        assert pixels.reshape(-1, 4)[:, :3].max(axis=1).min() > 0.0  # nothing left black
        nodes = bpy.data.objects[name].active_material.node_tree.nodes
        assert any(node.bl_idname == "ShaderNodeTexImage" and node.image == image for node in nodes)
    assert len([image for image in bpy.data.images if image.name.startswith(multiview.PREVIEW_PREFIX)]) == 4
    missing = str(tmp_path / "gone.safetensors")
    planned = []
    monkeypatch.setattr(multiview, "plan_multiview", lambda *args, **kwargs: planned.append(args))
    assert multiview_headless.main([*arguments, "--lora", f"{missing}:0.7"]) == 2
    assert f"LoRA not found: '{missing}'" in capsys.readouterr().err
    assert planned == []  # refused before any camera rendered


def test_every_view_is_generated_with_the_loras(scene, pair) -> None:
    """``engine_generator`` builds each view's request, each carrying the LoRAs."""
    from types import SimpleNamespace

    from sd_core.multiview import engine_generator
    from sd_core.request import LoraSpec

    requests = []

    class RecordingEngine:
        def generate(self, request, **_options):
            requests.append(request)
            return SimpleNamespace(images=[SimpleNamespace(pixels=request.image)])

    loras = [LoraSpec("/loras/moss.safetensors", 0.5), LoraSpec("/loras/rust.safetensors", -1.0)]
    generate = engine_generator(RecordingEngine(), loras=tuple(loras), model="m", prompt="moss", steps=3)
    multiview.run_multiview(plan_for(scene, pair, count=2, top=False), generate)
    assert len(requests) == 2
    assert all(request.loras == tuple(loras) and request.steps == 3 for request in requests)


def test_bad_input_is_refused_before_rendering(scene, pair) -> None:
    from sd_core.errors import ValidationError

    with pytest.raises(ValidationError, match="No cameras"):
        multiview.plan_multiview(scene, pair, [], size=VIEW_SIZE)
    with pytest.raises(ValidationError, match="Select the meshes"):
        multiview.ring_cameras(scene, [])


def test_panel_and_operators_register_with_the_addon(scene, pair) -> None:
    """Registered after the add-on's own panel (its parent); the panel draws in both camera modes."""
    import addon_utils

    from tests.blender.test_addon import RecordingLayout

    addon_utils.enable("blender_addon", default_set=True)
    try:
        assert hasattr(bpy.types.Scene, "sd_multiview") and hasattr(bpy.ops.sd, "multiview_texture")
        for source in ("RING", "SCENE"):
            scene.sd_multiview.camera_source = source
            calls: list = []
            stub = type("Stub", (), {"layout": RecordingLayout(calls)})()
            multiview.SD_PT_multiview.draw(stub, bpy.context)
            assert any(call[0] == "operator" and call[1][0] == "sd.multiview_texture" for call in calls)
        with bpy.context.temp_override(selected_objects=pair):
            assert bpy.ops.sd.multiview_cameras() == {"FINISHED"}
        assert len(multiview.multiview_cameras(scene, "RING")) == scene.sd_multiview.count + 1  # + top
    finally:
        addon_utils.disable("blender_addon", default_set=True)
    assert not hasattr(bpy.types.Scene, "sd_multiview")


def test_the_texture_button_runs_on_the_shared_job_runner(scene, pair, tiny_models, monkeypatch) -> None:
    """The operator queues a task on the add-on's runner (same worker and models as Generate); the timer applies it.
    The textures' PNG data is encoded on the worker too: the main thread only packs it."""
    import threading
    import time

    import addon_utils

    from blender_addon import operators

    encoders = []
    encode = multiview.png_bytes
    monkeypatch.setattr(
        multiview, "png_bytes", lambda rgba: encoders.append(threading.current_thread()) or encode(rgba)
    )
    addon_utils.enable("blender_addon", default_set=True)
    try:
        bpy.context.preferences.addons["blender_addon"].preferences.device = "cpu"
        settings = scene.sd_settings
        settings.model, settings.depth_model = str(tiny_models["sd1"]), str(tiny_models["sd1_controlnet"])
        settings.steps, settings.prompt = 2, "painted wood"
        scene.sd_multiview.count, scene.sd_multiview.top, scene.sd_multiview.size = 2, False, 64
        scene.sd_multiview.texture_size = 64
        missing = settings.loras.add()
        missing.path = "//gone.safetensors"
        with bpy.context.temp_override(selected_objects=pair), pytest.raises(RuntimeError, match="LoRA not found"):
            bpy.ops.sd.multiview_texture()
        assert not multiview.multiview_cameras(scene, "RING")  # refused before placing cameras or rendering
        missing.enabled = False  # an unticked row is left out
        with bpy.context.temp_override(selected_objects=pair):
            assert bpy.ops.sd.multiview_texture() == {"FINISHED"}
        deadline = time.monotonic() + 120
        while operators.poll_jobs() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        status = bpy.context.window_manager.sd_status
        assert status.startswith("Done:"), status
        assert len(encoders) == 2 and threading.main_thread() not in encoders
        for obj in pair:
            texture = bpy.data.images[f"{obj.name} {multiview.TEXTURE_LABEL}"]
            nodes = obj.active_material.node_tree.nodes
            assert any(getattr(node, "image", None) == texture for node in nodes)
    finally:
        addon_utils.disable("blender_addon", default_set=True)


def test_eevee_scenes_get_per_object_labels_too(scene, pair) -> None:
    """Multi-view keeps each object's paint on that object through labels: EEVEE's come from Cryptomatte."""
    scene.render.engine = "BLENDER_EEVEE"
    cameras = multiview.ring_cameras(scene, pair, count=2, elevation_degrees=20.0, top=False)
    plan = multiview.plan_multiview(scene, pair, cameras, size=VIEW_SIZE, texture_size=64)
    for view in plan.views:
        assert {0, 1, 2} == set(np.unique(view.labels))
