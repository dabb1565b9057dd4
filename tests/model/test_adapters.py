"""Adapter folders: stock PEFT loads them, and their bytes do not depend on string hashing."""

import os
import subprocess
import sys
from pathlib import Path

from peft import PeftModel

SAVE = """
import sys
from pathlib import Path
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from pecft_cli.model.adapters import save_adapter

model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
config = LoraConfig(r=2, target_modules=["v_proj", "q_proj", "k_proj", "o_proj"])
peft_model = get_peft_model(model, config, adapter_name=sys.argv[3])
out = Path(sys.argv[2])
out.mkdir()
save_adapter(peft_model, out, sys.argv[3])
"""


def saved(tiny_model: Path, out: Path, name: str, hash_seed: int) -> bytes:
    env = dict(os.environ, PYTHONHASHSEED=str(hash_seed))
    command = [sys.executable, "-c", SAVE, str(tiny_model), str(out), name]
    subprocess.run(command, env=env, check=True, capture_output=True)
    return (out / "adapter_config.json").read_bytes()


def test_the_config_is_the_same_whatever_the_hash_seed(tiny_model: Path, tmp_path: Path) -> None:
    configs = {saved(tiny_model, tmp_path / f"seed{s}", "default", s) for s in range(4)}
    assert len(configs) == 1
    assert b'"k_proj",\n    "o_proj",\n    "q_proj",\n    "v_proj"' in configs.pop()


def test_a_named_adapter_is_written_into_the_folder_itself(
    tiny_model: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    saved(tiny_model, tmp_path / "named", "task01", 0)
    files = sorted(p.name for p in (tmp_path / "named").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    loaded = PeftModel.from_pretrained(base, tmp_path / "named")
    assert sorted(loaded.peft_config["default"].target_modules) == [
        "k_proj",
        "o_proj",
        "q_proj",
        "v_proj",
    ]
