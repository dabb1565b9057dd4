"""Seeded LoRA dropout: an example's mask depends on its key and the layer, not on the batch it
shares, the layout, the process or the number of times it is drawn."""

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from pecft_cli.training.dropout import DropoutPlan, SeededDropout, example_keys, install

WIDTH = 16


def masked(layer: SeededDropout, x: torch.Tensor) -> torch.Tensor:
    return layer(x) * (1 - layer.p)  # 1 where kept, 0 where dropped


def test_an_example_gets_its_mask_whatever_batch_it_is_in() -> None:
    plan = DropoutPlan()
    layer = SeededDropout(0.5, plan, layer=7)
    keys = example_keys(3, step=2, micro=0, positions=[0, 1, 2])
    lengths = [4, 2, 5]
    with plan.examples(keys, lengths, packed=True):
        together = masked(layer, torch.ones(1, 11, WIDTH))[0]
    for i, (key, length) in enumerate(zip(keys, lengths, strict=True)):
        with plan.examples([key], [length], packed=True):
            alone = masked(layer, torch.ones(1, length, WIDTH))[0]
        start = sum(lengths[:i])
        assert torch.equal(together[start : start + length], alone)
    with plan.examples(keys, lengths, packed=False):
        padded = layer(torch.ones(3, 5, WIDTH))
    assert torch.equal(padded[1, :2] * (1 - layer.p), together[4:6])
    assert torch.equal(padded[1, 2:], torch.ones(3, WIDTH))  # padding positions are left alone


def test_masks_repeat_for_a_recomputation_and_differ_between_layers_and_steps() -> None:
    plan = DropoutPlan()
    first, second = SeededDropout(0.3, plan, 1), SeededDropout(0.3, plan, 2)
    x = torch.ones(1, 50, WIDTH)
    with plan.examples(example_keys(0, 1, 0, [0]), [50], packed=True):
        a, again, other_layer = masked(first, x), masked(first, x), masked(second, x)
    with plan.examples(example_keys(0, 2, 0, [0]), [50], packed=True):
        next_step = masked(first, x)
    assert torch.equal(a, again)
    assert not torch.equal(a, other_layer) and not torch.equal(a, next_step)
    assert 0.6 < float(a.mean()) < 0.8  # about 1 - p of the entries kept
    with plan.examples(example_keys(0, 1, 0, [0]), [50], packed=True):
        values = first(x).unique().tolist()
    assert values == [0.0, pytest.approx(1 / 0.7)]  # kept entries scaled as torch's dropout does


def test_outside_a_plan_it_is_plain_dropout_and_off_in_eval_mode() -> None:
    layer = SeededDropout(0.5, DropoutPlan(), 0)
    x = torch.ones(1, 64, WIDTH)
    torch.manual_seed(0)
    assert not torch.equal(layer(x), layer(x))  # the process generator, as torch's dropout
    layer.eval()
    assert torch.equal(layer(x), x)
    plan = DropoutPlan()
    planned = SeededDropout(0.5, plan, 0)
    with plan.examples([1], [3], packed=True):
        assert not torch.equal(planned(torch.ones(1, 4, WIDTH)), planned(torch.ones(1, 4, WIDTH)))


def test_install_replaces_every_lora_dropout_and_stock_peft_loads_the_adapter(
    tiny_model: Path, tmp_path: Path
) -> None:
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = LoraConfig(r=2, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(base, config)
    plan = DropoutPlan()
    assert install(model, plan) == 4  # two layers, two targets each
    assert install(model, plan) == 4  # again: nothing doubled
    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "adapter"
    )
    assert loaded.peft_config["default"].lora_dropout == pytest.approx(0.1)
