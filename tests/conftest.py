"""Shared test set-up: offline, and Blender's user folder kept out of the home directory."""

import os
import tempfile

# Before any import of huggingface_hub/diffusers: a stray hub call must fail at once, not hang.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="blender-user-"))
