"""Capture what the diffusion model works from: colour, depth, a selection mask and the camera.

``capture_camera`` renders the scene ONCE, with the Depth and Object Index passes, to a temporary
multilayer EXR, and reads it back with the OpenImageIO bundled in Blender. The bpy module has no other
way to get passes headlessly: the Render Result image is empty in background mode and loading a
multilayer EXR into ``bpy.data.images`` gives no pixels. Every render setting, view-layer pass,
``pass_index`` and file path it touches is restored afterwards, and nothing is left in ``bpy.data``.

Colour: the Combined pass is scene-linear. It is converted to display sRGB with the scene's own colour
management through OpenColorIO (exposure, look, view transform such as AgX/Filmic/Standard, display
device, gamma) - the same OCIO config Blender uses, matching Blender's saved PNGs to ~1e-5. Not
applied: the optional RGB curves and white balance of the view settings. Should OCIO refuse (e.g. a
custom config without the scene's view), the plain sRGB transfer function is used instead.

Mask: in Cycles, selected objects get temporary ``pass_index`` values above every index in the scene (one
per object, in the order given), so the Object Index pass isolates exactly them and tells them apart.
EEVEE has no Object Index pass; there the Cryptomatte object pass does it: a pixel is the selection's where
the selected objects cover more than half of it, and belongs to the one covering most (the EXR's manifest
maps object names to the ids in the pass). Workbench has neither: it captures colour and depth, and a
selection mask is refused. Without selected objects the mask covers all visible geometry, in every engine.

Background: Cycles writes 1e10 where nothing was hit, Workbench infinity; EEVEE writes the far clip
distance, read back through a depth buffer whose rounding there grows with clip_end / clip_start (a far
clip of 1000 read back as 683 with clip_start 0.0001), so no depth threshold finds it. EEVEE captures always
render the Cryptomatte pass, and a pixel less than half covered by any object is background.

Other capture sources (the interactive viewport) can return the same ``CameraCapture``: it only needs
pixels, a depth map and a ``CameraModel`` built from that view's matrices.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from sd_core.depth import visible_depth_mask
from sd_core.errors import ValidationError
from sd_core.projection import CameraModel

ENGINES_WITH_OBJECT_INDEX = frozenset({"CYCLES"})
ENGINES_WITH_CRYPTOMATTE = frozenset({"BLENDER_EEVEE"})
SAMPLE_SETTINGS = {"CYCLES": ("cycles", "samples"), "BLENDER_EEVEE": ("eevee", "taa_render_samples")}


@dataclass(frozen=True)
class CameraCapture:
    """One camera view of the scene, all arrays top row first and pixel-aligned with each other.

    ``color`` (H, W, 3) float32 display sRGB; ``depth`` (H, W) float32 planar camera depth, inf where
    nothing was hit; ``mask`` (H, W) float32, 1 where the requested objects are visible; ``camera``
    the matrices that produced it, for projecting a generated image back onto the scene; ``labels``
    (H, W) int32, k where the k-th requested object (1-based) is visible, 0 elsewhere (None when no
    objects were requested), so multi-view texturing can keep each object's paint on that object.
    """

    color: np.ndarray
    depth: np.ndarray
    mask: np.ndarray
    camera: CameraModel
    labels: np.ndarray | None = None

    @property
    def width(self) -> int:
        return self.camera.width

    @property
    def height(self) -> int:
        return self.camera.height


def camera_model(scene: bpy.types.Scene, camera_object: bpy.types.Object, width: int, height: int) -> CameraModel:
    """The scene camera as plain matrices for a ``width`` x ``height`` image (shift, sensor fit, aspect)."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = camera_object.evaluated_get(depsgraph)
    projection = evaluated.calc_matrix_camera(
        depsgraph, x=width, y=height, scale_x=scene.render.pixel_aspect_x, scale_y=scene.render.pixel_aspect_y
    )
    view = evaluated.matrix_world.normalized().inverted()
    return CameraModel(np.array(view, dtype=np.float64), np.array(projection, dtype=np.float64), width, height)


def capture_camera(
    scene: bpy.types.Scene,
    objects: Iterable[bpy.types.Object] = (),
    *,
    view_layer: bpy.types.ViewLayer | None = None,
    samples: int | None = None,
) -> CameraCapture:
    """Render the scene camera once and return colour, depth, the mask of ``objects`` and the camera.

    Uses the scene's render engine and resolution. ``samples`` overrides the render samples for this
    capture only (Cycles, EEVEE). With no ``objects`` the mask covers all visible geometry.
    """
    camera_object = scene.camera
    if camera_object is None or camera_object.type != "CAMERA":
        raise ValidationError("The scene has no active camera: add one, or set one as active, and try again.")
    if camera_object.data.type == "PANO":
        raise ValidationError("Panoramic cameras cannot be captured for projection: use a perspective camera.")
    masked_objects = list(objects)
    engine = scene.render.engine
    by_index = engine in ENGINES_WITH_OBJECT_INDEX
    if masked_objects and not by_index and engine not in ENGINES_WITH_CRYPTOMATTE:
        raise ValidationError(
            "A mask of selected objects needs Cycles' Object Index or EEVEE's Cryptomatte pass: "
            "switch the render engine to Cycles or EEVEE."
        )
    view_layer = view_layer or _default_view_layer(scene)
    mask_index = 1 + max((obj.pass_index for obj in scene.objects), default=0)
    images_before = set(bpy.data.images)

    with tempfile.TemporaryDirectory(prefix="sd_capture_") as folder, _restoring() as change:
        exr_path = str(Path(folder) / "capture.exr")
        render = scene.render
        if hasattr(render.image_settings, "media_type"):  # Blender 5.0+: choose multilayer before the format
            change(render.image_settings, "media_type", "MULTI_LAYER_IMAGE", also_keep=("file_format", "color_depth"))
        change(render.image_settings, "file_format", "OPEN_EXR_MULTILAYER")
        change(render.image_settings, "color_depth", "32")
        change(render, "filepath", exr_path)
        change(render, "use_file_extension", True)
        for setting in ("use_border", "use_compositing", "use_sequencer", "use_multiview"):
            change(render, setting, False)
        change(view_layer, "use_pass_z", True)
        if masked_objects and by_index:
            change(view_layer, "use_pass_object_index", True)
            for offset, obj in enumerate(masked_objects):
                change(obj, "pass_index", mask_index + offset)
        if engine in ENGINES_WITH_CRYPTOMATTE:  # its background, and the selection where there is one
            change(view_layer, "use_pass_cryptomatte_object", True)
        if samples is not None and engine in SAMPLE_SETTINGS:
            group, name = SAMPLE_SETTINGS[engine]
            change(getattr(scene, group), name, samples)

        try:
            bpy.ops.render.render(write_still=True, layer=view_layer.name, scene=scene.name)
        finally:  # rendering creates the "Render Result" image when there was none
            for image in set(bpy.data.images) - images_before:
                bpy.data.images.remove(image)
        passes, header = _read_multilayer_exr(exr_path, view_layer.name)

    required = ("Combined", "Depth", "CryptoObject00") if engine in ENGINES_WITH_CRYPTOMATTE else ("Combined", "Depth")
    for name in required:
        if name not in passes:
            raise ValidationError(f"The {engine} render produced no {name} pass, so the scene cannot be captured.")
    depth = passes["Depth"][..., 0].astype(np.float32)
    visible = visible_depth_mask(depth)
    ranks = [passes[name] for name in sorted(passes) if name.startswith("CryptoObject")]
    if engine in ENGINES_WITH_CRYPTOMATTE:
        visible &= cryptomatte_coverage(ranks) > 0.5
    depth[~visible] = np.inf
    labels = None
    if masked_objects and by_index:
        label = np.rint(passes["Object Index"][..., 0]).astype(np.int64) - mask_index + 1
        labels = np.where((label >= 1) & (label <= len(masked_objects)), label, 0).astype(np.int32)
        mask = (labels > 0).astype(np.float32)
    elif masked_objects:
        object_ids = cryptomatte_object_ids(header, view_layer.name)
        labels = cryptomatte_labels(ranks, [object_ids.get(obj.name) for obj in masked_objects])
        mask = (labels > 0).astype(np.float32)
    else:
        mask = np.isfinite(depth).astype(np.float32)
    height, width = depth.shape
    return CameraCapture(
        color=_to_display(passes["Combined"][..., :3], scene),
        depth=depth,
        mask=mask,
        camera=camera_model(scene, camera_object, width, height),
        labels=labels,
    )


def capture_image_editor(
    image: bpy.types.Image, mask_image: bpy.types.Image | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """An existing Blender image as (rgb (H, W, 3) display sRGB, mask (H, W)), both top row first.

    The mask (1 = generate here) comes from ``mask_image`` (its grey level) when given, else from the
    image's transparency (transparent = generate), else it is empty. Float images hold scene-linear
    pixels and are sRGB-encoded; byte images already hold their (sRGB) file values. The view
    transform is not applied: the image editor shows plain images with Standard too.
    """
    pixels = _image_pixels(image)
    rgb = np.repeat(pixels, 3, axis=2) if pixels.shape[2] < 3 else pixels[..., :3]
    if image.is_float and image.colorspace_settings.name != "Non-Color":
        rgb = _srgb_encode(rgb)
    if mask_image is not None:
        mask_pixels = _image_pixels(mask_image)
        if mask_pixels.shape[:2] != pixels.shape[:2]:
            raise ValidationError(
                f"The mask image '{mask_image.name}' is {mask_pixels.shape[1]}x{mask_pixels.shape[0]} but "
                f"'{image.name}' is {pixels.shape[1]}x{pixels.shape[0]}: they must be the same size."
            )
        mask = mask_pixels[..., : min(3, mask_pixels.shape[2])].mean(axis=2)
    elif pixels.shape[2] == 4:
        mask = 1.0 - pixels[..., 3]
    else:
        mask = np.zeros(pixels.shape[:2], dtype=np.float32)
    return np.ascontiguousarray(np.clip(rgb, 0.0, 1.0), dtype=np.float32), np.clip(mask, 0.0, 1.0).astype(np.float32)


def _image_pixels(image: bpy.types.Image) -> np.ndarray:
    """(H, W, C) float32 pixels, flipped from Blender's bottom-row-first to top row first."""
    width, height = image.size
    if width == 0 or height == 0:
        raise ValidationError(f"The image '{image.name}' has no pixels (is its file missing?).")
    flat = np.empty(width * height * image.channels, dtype=np.float32)
    image.pixels.foreach_get(flat)
    return flat.reshape(height, width, image.channels)[::-1]


def _default_view_layer(scene: bpy.types.Scene) -> bpy.types.ViewLayer:
    """The view layer the user looks at, when it belongs to this scene; else the scene's first."""
    context_layer = getattr(bpy.context, "view_layer", None)
    if context_layer is not None and scene.view_layers.get(context_layer.name) == context_layer:
        return context_layer
    return scene.view_layers[0]


@contextmanager
def _restoring() -> Iterator[Any]:
    """Yield ``change(owner, attribute, value)``; on exit put every changed attribute back.

    The first value seen per attribute is the one restored, in the order first seen: enum validity
    chains (media type -> file format -> colour depth), and setting the media type already switches
    the file format, so all three are recorded before the first of them changes.
    """
    originals: dict[tuple[int, str], tuple[Any, str, Any]] = {}

    def change(owner: Any, attribute: str, value: Any, *, also_keep: tuple[str, ...] = ()) -> None:
        for name in (attribute, *also_keep):
            originals.setdefault((owner.as_pointer(), name), (owner, name, getattr(owner, name)))
        setattr(owner, attribute, value)

    try:
        yield change
    finally:
        for owner, attribute, value in originals.values():
            setattr(owner, attribute, value)


def _open_image_io() -> Any:
    """OpenImageIO as bundled with Blender (not on the module's default import path)."""
    site_packages = os.path.join(bpy.utils.resource_path("LOCAL"), "python", "lib", "python3.11", "site-packages")
    if site_packages not in sys.path:
        sys.path.append(site_packages)
    import OpenImageIO  # only importable once the path above is known

    return OpenImageIO


def _read_multilayer_exr(path: str, layer_name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Pass name -> (H, W, C) float32 for one view layer (Blender 5 writes one EXR part per pass), and the
    file's header attributes (where Cryptomatte keeps its manifest)."""
    oiio = _open_image_io()
    source = oiio.ImageInput.open(path)
    if source is None:
        raise ValidationError(f"The render did not write its passes ({oiio.geterror()}).")
    channels_by_pass: dict[str, list[np.ndarray]] = {}
    try:
        header = {attribute.name: attribute.value for attribute in source.spec().extra_attribs}
        part = 0
        while source.seek_subimage(part, 0):
            spec = source.spec()
            pixels = source.read_image(part, 0, 0, spec.nchannels, "float")
            for channel, name in enumerate(spec.channelnames):
                layer, _, rest = name.partition(".")
                pass_name = rest.rpartition(".")[0]
                if layer == layer_name and pass_name:
                    channels_by_pass.setdefault(pass_name, []).append(pixels[..., channel])
            part += 1
    finally:
        source.close()
    return {name: np.stack(channels, axis=2) for name, channels in channels_by_pass.items()}, header


def cryptomatte_object_ids(header: dict[str, Any], layer_name: str) -> dict[str, np.float32]:
    """Object name -> its id in the layer's Cryptomatte object pass, from the manifest in the EXR ``header``.

    The manifest gives each name's 32-bit hash; the pass stores it as the float with those bits, its exponent
    kept within 1-254 (no denormals, infinities or NaNs), as the Cryptomatte specification and Blender do.
    """
    for key, value in header.items():
        if key.startswith("cryptomatte/") and key.endswith("/name") and value == f"{layer_name}.CryptoObject":
            manifest = json.loads(header.get(key.removesuffix("name") + "manifest", "{}"))
            return {name: _hash_to_float(int(digest, 16)) for name, digest in manifest.items()}
    return {}


def _hash_to_float(bits: int) -> np.float32:
    exponent = min(max((bits >> 23) & 0xFF, 1), 254)
    return np.array([(bits & 0x807FFFFF) | (exponent << 23)], dtype=np.uint32).view(np.float32)[0]


def cryptomatte_coverage(ranks: list[np.ndarray], object_id: np.float32 | None = None) -> np.ndarray:
    """(H, W) float32: how much of each pixel ``object_id`` covers, or any object when it is None.

    ``ranks`` are the Cryptomatte layers (H, W, 4), each holding two (id, coverage) pairs per pixel; EEVEE
    lists the background too, as id 0.
    """
    height, width = ranks[0].shape[:2] if ranks else (0, 0)
    coverage = np.zeros((height, width), dtype=np.float32)
    for layer in ranks:
        for pair in (0, 2):
            ids = layer[..., pair]
            covers = ids != 0.0 if object_id is None else ids == object_id
            coverage += np.where(covers, layer[..., pair + 1], np.float32(0.0))
    return coverage


def cryptomatte_labels(ranks: list[np.ndarray], object_ids: list[np.float32 | None]) -> np.ndarray:
    """(H, W) int32: where ``object_ids`` together cover more than half the pixel, the 1-based number of the one
    covering most of it; 0 elsewhere. An id that is None (an object the render did not list: hidden, or out of
    the view layer) covers nothing."""
    height, width = ranks[0].shape[:2] if ranks else (0, 0)
    coverages = np.stack(
        [np.zeros((height, width), np.float32)]
        + [cryptomatte_coverage(ranks, object_id) for object_id in object_ids if object_id is not None]
    )
    numbers = np.array([0] + [k for k, object_id in enumerate(object_ids, start=1) if object_id is not None])
    return np.where(coverages.sum(axis=0) > 0.5, numbers[coverages.argmax(axis=0)], 0).astype(np.int32)


def _to_display(linear_rgb: np.ndarray, scene: bpy.types.Scene) -> np.ndarray:
    """Scene-linear RGB to the scene's display, as Blender does when it saves a PNG render."""
    oiio = _open_image_io()
    view = scene.view_settings
    config = os.environ.get("OCIO") or os.path.join(
        bpy.utils.resource_path("LOCAL"), "datafiles", "colormanagement", "config.ocio"
    )
    exposed = oiio.ImageBuf(np.ascontiguousarray(linear_rgb * np.float32(2.0**view.exposure)))
    looked = oiio.ImageBuf()
    displayed = oiio.ImageBuf()
    ok = view.look == "None" or oiio.ImageBufAlgo.ociolook(
        looked, exposed, view.look, "scene_linear", "scene_linear", unpremult=False, colorconfig=config
    )
    ok = ok and oiio.ImageBufAlgo.ociodisplay(
        displayed,
        exposed if view.look == "None" else looked,
        scene.display_settings.display_device,
        view.view_transform,
        fromspace="scene_linear",
        unpremult=False,
        colorconfig=config,
    )
    if ok:
        display = np.clip(displayed.get_pixels(oiio.FLOAT)[..., :3], 0.0, 1.0)
    else:
        display = _srgb_encode(linear_rgb * np.float32(2.0**view.exposure))
    return np.power(display, 1.0 / view.gamma).astype(np.float32)


def _srgb_encode(linear: np.ndarray) -> np.ndarray:
    """The sRGB transfer function (IEC 61966-2-1) on values clipped to [0, 1]."""
    clipped = np.clip(linear, 0.0, 1.0)
    return np.where(clipped <= 0.0031308, clipped * 12.92, 1.055 * np.power(clipped, 1.0 / 2.4) - 0.055).astype(
        np.float32
    )
