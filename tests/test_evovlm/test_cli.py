"""`evovlm inspect` on a tiny LLaVA built in the test: parts and decoder layers found."""

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from evollm.checkpoint import Checkpoint
from evollm.engine.disk import layer_prefix
from evovlm.cli import main, split_parts


def test_inspect_tiny_llava(tmp_path, capsys):
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2, image_size=16, patch_size=8)
    text = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text,
                                                      image_token_index=63))
    model.save_pretrained(tmp_path / "vlm")
    ck = Checkpoint(tmp_path / "vlm")
    prefix, n = layer_prefix(ck)
    assert n == 3 and "language_model" in prefix and prefix.endswith("layers")
    parts = split_parts(ck.names())
    assert parts["vision tower"] and parts["projector"] and parts["language tower"]
    assert all("vision" not in p for p in parts["language tower"])
    assert main(["inspect", "--model", str(tmp_path / "vlm")]) == 0
    out = capsys.readouterr().out
    assert "LlavaForConditionalGeneration" in out and f"{prefix}.* x 3" in out
    assert main(["inspect", "--model", str(tmp_path / "none")]) == 2
