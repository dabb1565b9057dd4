"""The base model and its adapters: loading, what a folder holds, saving a LoRA, the loss."""
