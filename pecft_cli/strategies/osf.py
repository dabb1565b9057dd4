"""OSF, Orthogonal Subspace Fine-tuning (Nayak et al., "Sculpting Subspaces", ICLR 2026), through
PEFT's `OSFConfig`.

Each target weight W is split by its SVD: the top singular directions are frozen, the rest are
trained with gradients projected away from the frozen ones (PEFT's OSF layer does both). Between
stages the trained change is folded into W and OSF is applied again, so the next SVD sees what
earlier tasks taught, and the frozen share grows: stage t of T freezes t/T of each matrix's rank,
the budget PEFT's documentation gives for a known stream (the first stage trains all but the top
direction). `lora.r` and `lora.alpha` do not apply: OSF trains full-rank factors, so it trains many
more weights than a LoRA, and wants a learning rate near full fine-tuning's (1e-5 to 1e-4).

OSF is not a LoRA, so each stage is exported as one that stock PEFT loads: the model's whole
change from the base, W_now - W_base, by SVD at the full rank of each matrix (alpha = r, scale
1). It reproduces the trained model to float rounding, not bit for bit. PEFT's OSF layer wraps
plain `nn.Linear` only: a 4-bit or 8-bit base is refused before anything loads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, OSFConfig, PeftModel, get_peft_model
from peft.tuners.osf.layer import OSFLayer
from transformers import PreTrainedModel

from pecft_cli.data.tasks import Example
from pecft_cli.model.adapters import write_lora
from pecft_cli.strategies.base import Stage, Strategy
from pecft_cli.strategies.stacked import task_adapter


def osf_layers(model: torch.nn.Module) -> dict[str, OSFLayer]:
    """The OSF-wrapped modules, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, OSFLayer)}


class Osf(Strategy):
    """One set of weights, each stage trained in the subspace earlier stages left free."""

    shards = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.live = 0  # the stage whose OSF adapter the model holds
        self.layers: dict[str, OSFLayer] = {}  # the same modules whichever adapter is live
        self.original: dict[str, torch.Tensor] = {}  # the base weights, for the export

    def preserved(self, index: int) -> int | float:
        """OSF's effective (frozen) rank for stage `index`: a share of each matrix's rank."""
        return index / len(self.tasks) if index > 0 else 1

    def config(self, index: int) -> OSFConfig:
        return OSFConfig(
            target_modules=self.lora.target_modules, effective_rank=self.preserved(index)
        )

    def attach(self, model: PreTrainedModel) -> PeftModel:
        peft_model = get_peft_model(model, self.config(0), adapter_name=task_adapter(0))
        self.layers = osf_layers(peft_model)
        self.original = {
            name: layer.get_base_layer().weight.detach().clone()
            for name, layer in self.layers.items()
        }
        return peft_model

    def resume(self, model: PeftModel, finished: list[Stage], state: dict[str, Any]) -> None:
        """Put back the folded weights and the live stage's adapter, from its own SVD."""
        with torch.no_grad():
            for name, layer in self.layers.items():
                layer.get_base_layer().weight.copy_(state["weights"][name])
        self.switch(model, state["live"])

    def before_stage(self, model: PeftModel, stage: Stage, examples: list[Example]) -> None:
        """Fold the trained change into the weights and apply OSF again with a larger frozen
        share; nothing to do when the model already holds this stage's adapter."""
        if stage.index == self.live:
            return
        with torch.no_grad():
            for layer in self.layers.values():
                weight = layer.get_base_layer().weight
                weight.add_(layer.get_delta_weight(task_adapter(self.live)).to(weight.dtype))
        self.switch(model, stage.index)

    def switch(self, model: PeftModel, index: int) -> None:
        """Replace the live adapter by a fresh one for stage `index` on the current weights."""
        old, new = task_adapter(self.live), task_adapter(index)
        if old == new and new in model.peft_config:
            model.delete_adapter(old)  # resuming at stage 0: its SVD must be of these weights
            old = None
        model.add_adapter(new, self.config(index))
        model.set_adapter(new)
        if old is not None and old in model.peft_config:
            model.delete_adapter(old)
        for name, parameter in model.named_parameters():
            parameter.requires_grad = f"osf_svd_params.{new}." in name
        self.live = index

    def save_adapter(self, model: PeftModel, stage: Stage, folder: Path) -> None:
        """The whole change from the base as one plain LoRA (see the module docstring)."""
        tensors, ranks = {}, {}
        for name, layer in self.layers.items():
            weight = layer.get_base_layer().weight
            change = weight.double() + layer.get_delta_weight(task_adapter(self.live)).double()
            u, s, vh = torch.linalg.svd(change - self.original[name].double(), full_matrices=False)
            key = name.removeprefix("base_model.model.")
            tensors[f"base_model.model.{key}.lora_A.weight"] = vh.to(weight.dtype).contiguous()
            tensors[f"base_model.model.{key}.lora_B.weight"] = (u * s).to(weight.dtype).contiguous()
            ranks[f"^{re.escape(key)}$"] = len(s)
        modules = sorted({name.rsplit(".", 1)[-1] for name in self.layers})
        config = LoraConfig(
            r=max(ranks.values()),
            lora_alpha=max(ranks.values()),
            rank_pattern=ranks,
            alpha_pattern=ranks,
            target_modules=modules,
            bias="none",
            task_type="CAUSAL_LM",
        )
        live = model.peft_config[task_adapter(self.live)]
        config.base_model_name_or_path = live.base_model_name_or_path
        write_lora(folder, config, tensors)

    def state_dict(self) -> dict[str, Any]:
        """Which stage is live and the weights with every earlier stage folded in; the live
        adapter's own weights travel with the checkpoint's adapter weights."""
        weights = {
            name: layer.get_base_layer().weight.detach().to("cpu", copy=True)
            for name, layer in self.layers.items()
        }
        return {"live": self.live, "weights": weights}
