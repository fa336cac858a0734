"""Tiny random Llama, Qwen2 and Mistral models and a fixed batch of token ids, for adapter tests."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

ARCHITECTURES = ["llama", "qwen2", "mistral"]


def tiny(model_type: str, **config_fields) -> PreTrainedModel:
    """A 6-layer model of hidden 64 with GQA (8 query heads of 8, 4 KV heads); `config_fields` add to its config
    or replace these."""
    shape = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=8,
                 num_key_value_heads=4, head_dim=8, max_position_embeddings=128)  # fmt: skip
    config = AutoConfig.for_model(model_type, **{**shape, **config_fields})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    if model_type == "qwen2":  # random biases, so slicing them is tested
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.1)
    return model


def inputs_of(model: PreTrainedModel, module_path: str, calibration: torch.Tensor) -> torch.Tensor:
    """Every token's input to one Linear when the model runs the calibration ids."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(module_path).register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    with torch.no_grad():
        model(calibration, use_cache=False)
    handle.remove()
    return torch.cat([x.reshape(-1, x.shape[-1]) for x in seen])


def logits(model: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids, use_cache=False).logits


IDS = torch.randint(97, (2, 12), generator=torch.Generator().manual_seed(1))
