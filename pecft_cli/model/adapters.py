"""Writing one adapter of a PEFT model as a folder that stock `PeftModel.from_pretrained` loads.

PEFT writes an adapter that is not named `default` into a subfolder of the one it is given;
pecft's adapter folders hold the files themselves, so such an adapter is written to a scratch
folder beside the target and its files moved in. PEFT keeps `target_modules` as a set, so its
order in adapter_config.json follows the process's string hashing; pecft sorts it, so the same
seed writes the same bytes in every process.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel
from safetensors.torch import save_file

CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS = ("lora_", "osf_svd_params")  # how PEFT names the weights of LoRA and OSF


def is_adapter_weight(name: str) -> bool:
    """Whether a model parameter's name is that of an adapter weight (LoRA or OSF)."""
    return any(marker in name for marker in ADAPTER_WEIGHTS)


def save_adapter(model: PeftModel, folder: Path, name: str = "default") -> None:
    """Write the adapter `name` of `model` straight into `folder` (which exists)."""
    if name == "default":  # PEFT writes it into the folder itself; others it leaves out
        model.save_pretrained(str(folder), selected_adapters=[name])
    else:
        with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
            model.save_pretrained(scratch, selected_adapters=[name])
            for item in (Path(scratch) / name).iterdir():
                shutil.move(str(item), folder / item.name)
    sort_target_modules(folder / CONFIG_FILE)


def write_lora(folder: Path, config: PeftConfig, tensors: dict[str, torch.Tensor]) -> None:
    """An adapter folder from a config and its weights (keys as PEFT saves them), for adapters
    pecft computes rather than trains: a stack, or OSF's change from the base."""
    config.save_pretrained(str(folder))
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    sort_target_modules(folder / CONFIG_FILE)


def sort_target_modules(path: Path) -> None:
    """Rewrite a PEFT adapter config with its target modules in sorted order."""
    config = json.loads(path.read_text(encoding="utf-8"))
    modules = config.get("target_modules")
    if isinstance(modules, list) and modules != sorted(modules):
        config["target_modules"] = sorted(modules)
        path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")  # as PEFT


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """The trainable and the total number of weights of a model."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
