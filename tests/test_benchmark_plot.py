"""`lloom-executor benchmark --plot FILE.png` as an operator runs it: a real process, the echo
backend through real libp2p on loopback, and the PNG read back with matplotlib's image reader
(pillow): its size, that it is not blank, that both panels hold both paths' colours, and that
`--json` stays valid JSON beside it. Without matplotlib the command refuses before running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg
from matplotlib import rcParams
from matplotlib.colors import to_rgb

from lloom_executor.benchmark_plot import DPI, HEIGHT_IN, WIDTH_IN, cdf, throughput_bins
from test_benchmark_cmd import check_path, cli, write_config


def read_png(path: Path) -> np.ndarray:
    """The PNG's pixels as (height, width, RGB) floats in 0..1."""
    pixels = np.asarray(mpimg.imread(path))
    return pixels[:, :, :3]


def holds_colour(pixels: np.ndarray, rgb: tuple[float, float, float], tolerance: float = 0.08) -> int:
    """How many pixels are (close to) `rgb`."""
    return int((np.abs(pixels - np.array(rgb)).max(axis=2) < tolerance).sum())


def test_plot_with_json_output(tmp_path: Path) -> None:
    config = write_config(tmp_path, backend="echo", models=["echo-model"])
    png = tmp_path / "out" / "bench.png"
    png.parent.mkdir()
    out = cli(
        "benchmark", "--config", str(config), "--model", "echo-model", "--requests", "30", "--concurrency", "4",
        "--json", "--plot", str(png),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)  # only the JSON on stdout: no "plot written" line in it
    check_path(data["executor"], 30, 4)
    check_path(data["backend_only"], 30, 4)

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = read_png(png)
    assert pixels.shape == (int(HEIGHT_IN * DPI), int(WIDTH_IN * DPI), 3)
    # not blank: real variation, many distinct colours (text, grid, two coloured lines per panel)
    assert pixels.std() > 0.05
    assert len(np.unique((pixels * 255).round().astype(np.uint8).reshape(-1, 3), axis=0)) > 20
    # the first two colours of the cycle are the executor's and the backend's lines: both drawn,
    # in the left (latency) and the right (throughput) half of the picture
    executor_rgb, backend_rgb = (to_rgb(c) for c in rcParams["axes.prop_cycle"].by_key()["color"][:2])
    half = pixels.shape[1] // 2
    for panel in (pixels[:, :half], pixels[:, half:]):
        assert holds_colour(panel, executor_rgb) > 50
        assert holds_colour(panel, backend_rgb) > 50


def test_plot_with_table_output(tmp_path: Path) -> None:
    config = write_config(tmp_path, backend="echo", models=["echo-model"])
    png = tmp_path / "bench.png"
    out = cli(
        "benchmark", "--config", str(config), "--model", "echo-model", "--requests", "8", "--concurrency", "2",
        "--plot", str(png),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1] == f"plot written to {png}"
    assert read_png(png).shape == (int(HEIGHT_IN * DPI), int(WIDTH_IN * DPI), 3)


def test_without_matplotlib_refuses_before_running(tmp_path: Path) -> None:
    """A `None` in sys.modules is Python's own way to make an import fail as if not installed."""
    config = write_config(tmp_path, backend="echo", models=["echo-model"])
    png = tmp_path / "bench.png"
    program = "import sys; sys.modules['matplotlib'] = None; from lloom_executor.cli import main; main()"
    args = ["benchmark", "--config", str(config), "--model", "echo-model", "--json", "--plot", str(png)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLOOM_", "OPENAI_", "RUST_LOG"))}
    out = subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, timeout=50, env=env)
    assert out.returncode == 1
    assert out.stdout == ""  # refused before the run: no figures
    assert "--plot needs matplotlib: pip install 'lloom-executor[plot]'" in out.stderr
    assert not png.exists()


def test_cdf_and_throughput_bins() -> None:
    ms, frac = cdf([0.003, 0.001, 0.002, 0.002])
    assert ms == pytest.approx([1.0, 2.0, 2.0, 3.0]) and frac == [0.25, 0.5, 0.75, 1.0]
    # 0.5 s bins over 2 s: a completion exactly at the end falls in the last bin
    assert throughput_bins([0.1, 0.2, 0.6, 1.9, 2.0], 0.5, 4) == [4.0, 2.0, 0.0, 4.0]
