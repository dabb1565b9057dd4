"""Shared fixtures: a tiny random Llama with its own tokenizer, and small task data files.

The tiny model is built from a config with random weights: fast enough for unit tests of the
plumbing. Behaviour that depends on a real model is tested with SmolLM2 in test_real_model.py.

Every test process and every subprocess it starts computes with one thread: on some CPUs float
reductions depend on the thread count, and tests compare runs in this process with runs in
subprocesses bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os

os.environ["OMP_NUM_THREADS"] = "1"
from pathlib import Path
from typing import Any

import pytest
import yaml

CORPUS = [
    "Country: France Code: FRA",
    "Country: Japan Code: JPN",
    "Currency: Euro Code: EUR",
    "Currency: Japanese yen Code: JPY",
    "Language: French Code: fr",
    "What is the answer? yes no maybe",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 :?!.,",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def build_tiny_model(folder: Path, hidden: int = 32) -> Path:
    """A 2-layer Llama and a byte-level BPE tokenizer without a pad token, saved to `folder`.

    bitsandbytes quantizes in blocks of 64 weights per row, so 4-bit tests use hidden=64.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> None:
    """Pin torch to the thread count every subprocess gets through OMP_NUM_THREADS."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model_64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama wide enough for bitsandbytes' 4-bit blocks."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-64"), hidden=64)


def invoke(*args: object) -> Any:
    """Run the pecft command line in this process, as a shell script would call it."""
    from typer.testing import CliRunner

    from pecft_cli.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under a folder with the hash of its bytes, to show nothing changed."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"  # who holds the run folder, rewritten by each run
    }


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


COUNTRIES = [
    ("France", "FRA"),
    ("Japan", "JPN"),
    ("Spain", "ESP"),
    ("Peru", "PER"),
    ("Chile", "CHL"),
    ("Egypt", "EGY"),
    ("Kenya", "KEN"),
    ("Nepal", "NPL"),
]
ANSWERS = [
    ("Is ice cold?", "yes"),
    ("Is fire cold?", "no"),
    ("Is snow white?", "yes"),
    ("Is coal white?", "no"),
    ("Is the sea wet?", "yes"),
    ("Is sand wet?", "no"),
]


@pytest.fixture
def recipe_file(tmp_path: Path, tiny_model: Path) -> Path:
    """A two-task recipe (a generation task and a choice task) on the tiny model."""
    return write_recipe(tmp_path, tiny_model)


def write_recipe(tmp_path: Path, tiny_model: Path) -> Path:
    """Write the two tasks' data and their recipe (output_dir `run`) under tmp_path."""
    data = tmp_path / "data"
    write_jsonl(data / "codes" / "train.jsonl", [{"country": c, "code": k} for c, k in COUNTRIES])
    write_jsonl(
        data / "codes" / "eval.jsonl", [{"country": c, "code": k} for c, k in COUNTRIES[:4]]
    )
    write_jsonl(data / "yesno" / "train.jsonl", [{"q": q, "a": a} for q, a in ANSWERS])
    write_jsonl(data / "yesno" / "eval.jsonl", [{"q": q, "a": a} for q, a in ANSWERS[:4]])
    recipe = {
        "name": "tiny",
        "seed": 3,
        "output_dir": str(tmp_path / "run"),
        "model": {"path": str(tiny_model)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "log_every": 1},
        "evaluation": {"batch_size": 3, "max_new_tokens": 4},
        "tasks": [
            {
                "name": "codes",
                "train": "data/codes/train.jsonl",
                "eval": "data/codes/eval.jsonl",
                "prompt": "Country: {country} Code: ",
                "target": "code",
            },
            {
                "name": "yesno",
                "train": "data/yesno/train.jsonl",
                "eval": "data/yesno/eval.jsonl",
                "prompt": "{q} ",
                "target": "{a}",
                "choices": ["yes", "no"],
            },
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def rescore_with_stock_peft(run: Path, stage: int) -> list[float]:
    """Score every task with adapters/<stage>-* loaded by plain `PeftModel.from_pretrained`."""
    from peft import PeftModel

    from pecft_cli.model.load import load_model, load_tokenizer
    from pecft_cli.recipe.load import load_recipe
    from pecft_cli.scoring.scorer import score_task
    from pecft_cli.training.preflight import preflight

    recipe = load_recipe(run / "recipe.yaml")
    tokenizer = load_tokenizer(recipe.model)
    (adapter,) = (run / "adapters").glob(f"{stage:02d}-*")
    model = PeftModel.from_pretrained(load_model(recipe.model), adapter)
    return [
        score_task(model, tokenizer, task, recipe.evaluation).score
        for task in preflight(recipe, tokenizer).tasks
    ]


def distance_from_first_task(run: Path) -> float:
    """Squared distance between a two-task run's adapters: how far the second task moved it."""
    from safetensors.torch import load_file

    first = load_file(run / "adapters/01-codes/adapter_model.safetensors")
    second = load_file(run / "adapters/02-yesno/adapter_model.safetensors")
    return sum((second[key] - first[key]).pow(2).sum().item() for key in first)
