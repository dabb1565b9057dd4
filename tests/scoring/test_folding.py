"""Scoring with LoRAs folded into a copy of the base weights: same outputs, same weights after."""

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

from pecft_cli.scoring.folding import folded

IDS = torch.tensor([[1, 5, 9, 3, 7, 2]])


def lora_model(tiny_model: Path, **options):
    torch.manual_seed(0)
    targets = ["q_proj", "v_proj"]
    config = LoraConfig(r=4, target_modules=targets, init_lora_weights=False, **options)
    return get_peft_model(LlamaForCausalLM.from_pretrained(tiny_model), config).eval()


def logits(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=IDS).logits


def test_folded_scoring_equals_the_live_adapter_and_restores_the_weights(tiny_model: Path) -> None:
    model = lora_model(tiny_model)
    weights = {n: p for n, p in model.named_parameters() if "base_layer" in n}
    before = {n: (p.data_ptr(), p.detach().clone()) for n, p in weights.items()}
    live = logits(model)
    with folded(model) as count:
        assert count == 2 * model.config.num_hidden_layers
        assert torch.allclose(logits(model), live, atol=1e-5)
    for name, parameter in weights.items():
        pointer, values = before[name]
        assert parameter.data_ptr() == pointer and torch.equal(parameter, values)
    assert not any(getattr(m, "merged", False) for m in model.modules())
    assert torch.equal(logits(model), live)


def test_every_active_adapter_is_folded(tiny_model: Path) -> None:
    model = lora_model(tiny_model)
    torch.manual_seed(1)
    model.add_adapter("second", LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    model.base_model.set_adapter(["default", "second"])
    live = logits(model)
    with folded(model):
        assert torch.allclose(logits(model), live, atol=1e-5)


def test_dora_and_a_disabled_fold_leave_the_layers_live(tiny_model: Path) -> None:
    model = lora_model(tiny_model, use_dora=True)
    with folded(model) as count:
        assert count == 0
    with folded(lora_model(tiny_model), enabled=False) as count:
        assert count == 0
