"""Prompt embeddings kept between requests: artists iterate on seeds, strength and masks far more than on words.

Why: diffusers encodes the prompt and the negative prompt on every call, tokenising on the host and running
the text encoders (two for SDXL) on the device: a few milliseconds of a request's fixed cost that buy
nothing when the words did not change. The pipelines take ready embeddings instead of text, so the engine
encodes through the pipeline's own ``encode_prompt`` once per model, words and guidance, and passes the
result on every later call.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

# What ``encode_prompt`` returns, in order: two tensors for SD1.x/SD2.x pipelines, four for SDXL ones.
_OUTPUT_NAMES = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")


class PromptEmbeddings:
    """The embeddings of recently used prompts, per model; the oldest are forgotten past ``capacity``."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str, str, bool], dict[str, torch.Tensor]] = OrderedDict()

    def arguments(self, pipe: Any, model: str, prompt: str, negative_prompt: str, guidance: bool) -> dict[str, Any]:
        """Pipeline keyword arguments for these words: embeddings instead of text, encoded once per model.

        ``guidance``: whether classifier-free guidance runs, so whether a negative embedding is needed.
        """
        key = (model, prompt, negative_prompt, guidance)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        with torch.no_grad():
            outputs = pipe.encode_prompt(
                prompt=prompt,
                device=pipe._execution_device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=guidance,
                negative_prompt=negative_prompt or None,
            )
        named = zip(_OUTPUT_NAMES, outputs, strict=False)  # two or four outputs
        embeddings = {name: tensor for name, tensor in named if tensor is not None}
        self._entries[key] = embeddings
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return embeddings

    def clear(self) -> None:
        self._entries.clear()

    def forget(self, model: str) -> None:
        """Drop ``model``'s embeddings: its text encoders changed (a LoRA was merged or taken out)."""
        for key in [key for key in self._entries if key[0] == model]:
            del self._entries[key]
