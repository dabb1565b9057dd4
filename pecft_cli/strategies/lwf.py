"""LwF (Li and Hoiem 2016) for one shared LoRA: learn each new task while the model's answers on
that task's inputs stay close to those of the model as it was before the task.

Before every stage after the first, the LoRA's weights are copied into a frozen teacher adapter;
at every micro-batch the teacher scores the same inputs (PEFT runs the batch through that adapter
alone, in eval mode, without gradients), and the loss adds
weight * T^2 * KL(teacher / T || student / T), summed over the answer tokens' next-token
distributions at temperature T. Only the trained LoRA is exported: the teacher is a copy.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftModel

from pecft_cli.data.tasks import Example
from pecft_cli.model.loss import AnswerBatch, answer_logits
from pecft_cli.strategies.base import Stage, Strategy, lora_config

TEACHER = "lwf_teacher"
STUDENT = "default"


class Lwf(Strategy):
    """One LoRA, as seq, distilled towards its own earlier self on each new task's inputs."""

    batch_loss_name = "distill_loss"

    def resume(self, model: PeftModel, finished: list[Stage], state: dict[str, Any]) -> None:
        """A checkpoint after the first stage holds the teacher's weights too."""
        if finished:
            add_teacher(model, self)
        self.load_state_dict(state)

    def before_stage(self, model: PeftModel, stage: Stage, examples: list[Example]) -> None:
        """The teacher becomes the model as it is now, before this stage trains."""
        if stage.index == 0:
            return
        add_teacher(model, self)
        with torch.no_grad():
            for module in model.modules():
                for part in ("lora_A", "lora_B"):
                    layers = getattr(module, part, None)
                    if layers is not None and TEACHER in layers:
                        layers[TEACHER].weight.copy_(layers[STUDENT].weight)

    def batch_loss(self, model: PeftModel, stage: Stage, batch: AnswerBatch) -> torch.Tensor | None:
        if stage.index == 0:
            return None
        temperature = self.options.temperature
        teacher = teacher_logits(model, batch)
        student = torch.log_softmax(batch.logits.float() / temperature, dim=-1)
        target = torch.log_softmax(teacher.float() / temperature, dim=-1)
        kl = (target.exp() * (target - student)).sum()
        return self.options.weight * temperature**2 * kl


def add_teacher(model: PeftModel, strategy: Strategy) -> None:
    """The frozen teacher adapter beside the trained one (once), leaving the trained one active.
    Its initial values are overwritten, so creating it draws nothing training would see."""
    if TEACHER not in model.peft_config:
        with torch.random.fork_rng():
            model.add_adapter(TEACHER, lora_config(strategy.lora))
    model.base_model.set_adapter(STUDENT)
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            parameter.requires_grad = f".{STUDENT}." in name


def teacher_logits(model: PeftModel, batch: AnswerBatch) -> torch.Tensor:
    """The teacher's logits at the batch's answer positions."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return answer_logits(model, batch.features, batch.pad_id, TEACHER).logits
    finally:
        model.train(was_training)
