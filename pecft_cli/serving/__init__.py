"""How a stage answers: routers over per-task LoRAs, and generation.

Nothing here imports training."""
