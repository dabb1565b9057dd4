"""SeqLoRA: one LoRA trained through every task in turn, the baseline that forgets."""

from pecft_cli.strategies.base import Strategy


class Sequential(Strategy):
    """Plain sequential fine-tuning; every hook keeps its default."""
