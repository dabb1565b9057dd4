"""Reading a trained run back: `pecft eval` and `pecft report`.

Nothing here imports training."""
