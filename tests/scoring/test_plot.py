import struct
from pathlib import Path

from pecft_cli.scoring.heatmap import DPI, MAX_HEIGHT, MAX_WIDTH, save_heatmap


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def stream(count: int) -> tuple[list[str], dict[str, list[float | None]]]:
    """A `count`-task matrix with a scored diagonal, last row and base row."""
    tasks = [f"task_{k:03d}" for k in range(count)]
    matrix: dict[str, list[float | None]] = {"base": [0.1] * count}
    for k, task in enumerate(tasks):
        full = k == count - 1
        matrix[task] = [0.5 if full or j in (k, k + 1) else None for j in range(count)]
    return tasks, matrix


def test_a_short_stream_gets_a_cell_per_inch(tmp_path: Path) -> None:
    tasks, matrix = stream(4)
    save_heatmap(tmp_path / "m.png", tasks, matrix, "four")
    assert png_size(tmp_path / "m.png") == (round((1.1 * 4 + 2.5) * DPI), round(4.55 * DPI))


def test_a_long_stream_keeps_the_image_bounded(tmp_path: Path) -> None:
    for count in (50, 200):
        tasks, matrix = stream(count)
        save_heatmap(tmp_path / f"{count}.png", tasks, matrix, "long")
        assert png_size(tmp_path / f"{count}.png") == (MAX_WIDTH * DPI, MAX_HEIGHT * DPI)
