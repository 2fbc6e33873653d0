"""The FaceID-Plus-v2 SDXL LoRA layout the test LoRA copies, checked against what is known of the published file."""

from __future__ import annotations

from lora_factories import PUBLISHED_RANK, SDXL_ATTENTION_BLOCKS, lora_modules


def test_full_sdxl_layout_weighs_what_the_published_file_weighs() -> None:
    modules = lora_modules(SDXL_ATTENTION_BLOCKS, model_channels=320, context_dim=2048)
    blocks = {name.rsplit("_attn", 1)[0] for name in modules}
    assert len(blocks) == 70, "SDXL has 70 transformer blocks"
    assert len(modules) == 70 * 2 * 4
    # h94 lists ip-adapter-faceid-plusv2_sdxl_lora.safetensors at 371 MB: rank 128, fp16 (2 bytes).
    tensor_bytes = sum(PUBLISHED_RANK * (fan_in + fan_out) * 2 for fan_in, fan_out in modules.values())
    assert tensor_bytes == 371_589_120
    assert modules["lora_unet_down_blocks_2_attentions_1_transformer_blocks_9_attn2_to_k"] == (2048, 1280)
    assert modules["lora_unet_up_blocks_1_attentions_2_transformer_blocks_1_attn1_to_out_0"] == (640, 640)
