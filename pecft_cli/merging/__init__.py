"""`pecft merge-adapters`: per-task LoRAs into one, or an adapter into the base.

Nothing here imports training."""
