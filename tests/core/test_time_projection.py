"""A network's ResNet time-embedding projections stacked into one product (sd_core/time_projection.py), inside
the fused ResNet blocks (sd_core/resnet_block.py), against diffusers' own UNet on the CPU."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.resnet import ResnetBlock2D

from sd_core.resnet_block import use_fused_resnet_blocks
from sd_core.time_projection import TimeProjections


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, cross_attention_dim=8,
        norm_num_groups=8, attention_head_dim=4, sample_size=8,
    ).eval()  # fmt: skip
    with torch.no_grad():  # diffusers initialises biases to zero: make them matter
        for parameter in unet.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return unet


def unet_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=generator), torch.tensor(500.0), torch.randn(2, 5, 8, generator=generator)


def test_stacked_projections_give_the_unet_s_own_output_from_one_copy_of_the_weights():
    unet = tiny_unet()
    sample, timestep, text = unet_inputs()
    state = {name: tensor.clone() for name, tensor in unet.state_dict().items()}
    with torch.no_grad():
        expected = unet(sample, timestep, text).sample
        routed = use_fused_resnet_blocks(unet)
        got = unet(sample, timestep, text).sample
    blocks = [module for module in unet.modules() if isinstance(module, ResnetBlock2D)]
    assert routed == len(blocks) == 8
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(unet.state_dict()[name], tensor) for name, tensor in state.items())
    # every block's projection weights are rows of one stacked matrix
    bases = {block.time_emb_proj.weight.untyped_storage().data_ptr() for block in blocks}
    assert len(bases) == 1


def test_one_product_serves_every_block_of_a_forward_and_a_new_embedding_is_projected_anew():
    unet = tiny_unet()
    blocks = [module for module in unet.modules() if isinstance(module, ResnetBlock2D)]
    projections = TimeProjections(blocks)
    embedding = torch.randn(2, blocks[0].time_emb_proj.in_features)
    with torch.no_grad():
        first = projections.of(blocks[0], embedding)
        for block in blocks:
            expected = block.time_emb_proj(torch.nn.functional.silu(embedding))
            torch.testing.assert_close(projections.of(block, embedding), expected, atol=1e-6, rtol=1e-6)
            assert projections.of(block, embedding).untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        embedding.mul_(2.0)  # changed in place: projected again
        doubled = projections.of(blocks[0], embedding)
        torch.testing.assert_close(doubled, blocks[0].time_emb_proj(torch.nn.functional.silu(embedding)))
    del embedding, first, doubled  # the forward is over: nothing of it is kept
    assert projections._last is None


def test_moved_weights_are_projected_block_by_block():
    unet = tiny_unet()
    sample, timestep, text = unet_inputs()
    with torch.no_grad():
        use_fused_resnet_blocks(unet)
        blocks = [module for module in unet.modules() if isinstance(module, ResnetBlock2D)]
        projections = blocks[0].forward.keywords["time_projections"]
        unet.to(torch.float64)  # every parameter gets storage of its own: the stack would be stale
        got = unet(sample.double(), timestep, text.double()).sample
        expected = tiny_unet().to(torch.float64)(sample.double(), timestep, text.double()).sample
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
    assert projections._weight is None  # the stale stack is let go, not rebuilt inside a forward
