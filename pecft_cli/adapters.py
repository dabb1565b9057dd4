"""Writing one adapter of a PEFT model as a folder that stock `PeftModel.from_pretrained` loads.

PEFT writes an adapter that is not named `default` into a subfolder of the one it is given;
pecft's adapter folders hold the files themselves, so the adapter is written to a scratch
folder beside the target and its files moved in.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from peft import PeftModel


def save_named_adapter(model: PeftModel, name: str, folder: Path) -> None:
    """Write the adapter `name` of `model` straight into `folder` (which exists)."""
    with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
        model.save_pretrained(scratch, selected_adapters=[name])
        written = Path(scratch) / name if name != "default" else Path(scratch)
        for item in written.iterdir():
            shutil.move(str(item), folder / item.name)
