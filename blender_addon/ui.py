"""The sidebar panel (3D Viewport > Sidebar > SD). Panels draw state; they never compute it."""

from __future__ import annotations

import bpy

from .generation import current_runner


class SD_UL_history(bpy.types.UIList):
    def draw_item(self, _context, layout, _data, item, _icon, _active_data, _active_prop, _index=0, _flt_flag=0):
        layout.label(text=item.label, icon="IMAGE_DATA")


class SD_UL_loras(bpy.types.UIList):
    def draw_item(self, _context, layout, _data, item, _icon, _active_data, _active_prop, _index=0, _flt_flag=0):
        row = layout.row(align=True)
        row.prop(item, "enabled", text="")
        split = row.split(factor=0.7, align=True)
        split.active = item.enabled
        split.prop(item, "path", text="")
        split.prop(item, "scale", text="")


class SidebarPanel:
    """Where every panel of the add-on lives: 3D Viewport > Sidebar > SD."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "SD"


class SD_PT_main(SidebarPanel, bpy.types.Panel):
    bl_label = "Stable Diffusion"
    bl_idname = "SD_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.sd_settings
        layout.operator_menu_enum("sd.apply_preset", "preset", text="Presets", icon="PRESET")
        layout.prop(settings, "model")
        layout.prop(settings, "prompt")
        layout.prop(settings, "negative_prompt")
        layout.prop(settings, "source")
        if settings.source == "IMAGE":
            layout.template_ID(settings, "source_image", open="image.open")
            layout.prop(settings, "mask_image")
        else:
            layout.prop(settings, "capture_samples")
        layout.prop(settings, "mode")
        if settings.mode != "TXT2IMG":
            layout.prop(settings, "strength", slider=True)

        runner = current_runner()
        busy = runner is not None and bool(runner.active_jobs())
        row = layout.row(align=True)
        row.scale_y = 1.5
        row.operator("sd.generate", icon="RENDER_STILL")
        if busy:
            row.operator("sd.cancel", icon="CANCEL")
        wm = context.window_manager
        if busy or wm.sd_status:
            layout.progress(factor=wm.sd_progress, type="BAR", text=wm.sd_status or "Working...")
        if settings.last_result is not None:
            layout.template_ID_preview(settings, "last_result", rows=2, cols=4)


class SD_PT_sampling(SidebarPanel, bpy.types.Panel):
    bl_label = "Sampling"
    bl_parent_id = "SD_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.sd_settings
        layout.use_property_split = True
        layout.prop(settings, "steps")
        layout.prop(settings, "guidance")
        layout.prop(settings, "scheduler")
        row = layout.row(heading="Seed")
        row.prop(settings, "random_seed", text="Random")
        sub = row.row()
        sub.enabled = not settings.random_seed
        sub.prop(settings, "seed", text="")
        layout.prop(settings, "batch_size")
        layout.prop(settings, "size_from_render")
        if not settings.size_from_render:
            col = layout.column(align=True)
            col.prop(settings, "width")
            col.prop(settings, "height")
        layout.prop(settings, "tiling")


class SD_PT_loras(SidebarPanel, bpy.types.Panel):
    bl_label = "LoRAs"
    bl_parent_id = "SD_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        settings = context.scene.sd_settings
        row = self.layout.row()
        row.template_list("SD_UL_loras", "", settings, "loras", settings, "lora_index", rows=2)
        col = row.column(align=True)
        col.operator("sd.lora_add", icon="ADD", text="")
        col.operator("sd.lora_remove", icon="REMOVE", text="")


class SD_PT_control(SidebarPanel, bpy.types.Panel):
    bl_label = "Depth, Mask & Projection"
    bl_parent_id = "SD_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.sd_settings
        layout.use_property_split = True
        layout.prop(settings, "use_depth")
        col = layout.column()
        col.enabled = settings.use_depth
        col.prop(settings, "depth_model")
        col.prop(settings, "depth_scale", slider=True)
        col = layout.column(align=True)
        col.enabled = settings.mode == "INPAINT"
        col.prop(settings, "mask_grow")
        col.prop(settings, "mask_feather")
        layout.prop(settings, "project_to_selected")
        if settings.project_to_selected:
            layout.prop(settings, "bake_resolution")
        layout.prop(settings, "output_dir")


class SD_PT_history(SidebarPanel, bpy.types.Panel):
    bl_label = "History"
    bl_parent_id = "SD_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        scene = context.scene
        self.layout.template_list("SD_UL_history", "", scene, "sd_history", scene, "sd_history_index", rows=3)
        self.layout.operator("sd.restore_history", icon="RECOVER_LAST")


CLASSES = (SD_UL_history, SD_UL_loras, SD_PT_main, SD_PT_sampling, SD_PT_loras, SD_PT_control, SD_PT_history)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
