"""`lloom-executor benchmark`: a model through the whole executor path, and the backend alone.

The command's options, progress lines and table; `benchmark.py` does the measuring.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .cli_config import config_option, load_or_exit, print_table

if TYPE_CHECKING:
    from .benchmark import BenchmarkResult

PLOT_NEEDS_MATPLOTLIB = "--plot needs matplotlib: pip install 'lloom-executor[plot]'"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.001:
        return f"{value * 1e6:.0f} µs"
    return f"{value * 1000:.1f} ms" if value < 10 else f"{value:.1f} s"


def _check_plot_available() -> None:
    """Fail before the run, not after it, when `--plot` cannot be drawn (matplotlib is an extra)."""
    try:
        from . import benchmark_plot  # noqa: F401  (imports matplotlib)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "matplotlib":
            raise
        raise click.ClickException(PLOT_NEEDS_MATPLOTLIB) from None


def _write_plot(path: Path, result: BenchmarkResult) -> None:
    """Both paths' successful timed requests, drawn by `benchmark_plot`."""
    from .benchmark_plot import PathTimes, write_plot

    paths: list[PathTimes] = []
    for label, stats in (("executor (libp2p)", result.executor), ("backend alone", result.backend_only)):
        ok = [s for s in stats.samples if s.ok]
        paths.append(PathTimes(label, [s.latency_s for s in ok], [s.finished_s for s in ok], stats.wall_s))
    title = (
        f"lloom-executor benchmark: {result.model} on {result.backend},"
        f" {result.executor.requests} requests per path, {result.executor.concurrency} in flight"
    )
    try:
        write_plot(path, paths, title=title)
    except OSError as exc:
        raise click.ClickException(f"cannot write the plot to {path}: {exc}") from None


@click.command()
@config_option
@click.option("--model", required=True, help="The model to benchmark: an enabled [[models]] name or a [model_aliases] alias.")
@click.option(
    "--requests", "n_requests", type=click.IntRange(min=1), default=50, show_default=True, help="Requests to send (per path)."
)
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True, help="Requests in flight at once.")
@click.option("--prompt", default=None, help="The prompt of every request (default: a short question).")
@click.option(
    "--max-tokens", "max_tokens", type=click.IntRange(min=1), default=64, show_default=True, help="max_tokens of every request."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--progress/--no-progress",
    "show_progress",
    default=None,
    help="Show requests done and live req/s on stderr (default: on a terminal, not with --json).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Also draw both paths' latency distribution and throughput over time to this PNG (needs lloom-executor[plot]).",
)
def benchmark(
    config_path: Path | None,
    model: str,
    n_requests: int,
    concurrency: int,
    prompt: str | None,
    max_tokens: int,
    as_json: bool,
    show_progress: bool | None,
    plot_path: Path | None,
) -> None:
    """Benchmark a model through the whole executor path, and the backend alone for comparison.

    Starts an executor from the config inside this process (loopback only, a
    temporary data dir and a throwaway key, no admin API, metrics, response
    cache or model discovery, so it does not collide with a running node),
    sends signed requests over libp2p offering the model's current price, then
    sends the same requests straight to the backend. Exits non-zero when any
    request failed (the figures and the plot still come out).
    """
    import json
    import logging

    import uvloop

    from . import service  # noqa: F401  (imports libp2p, which resets its loggers: quiet them after)
    from .benchmark import DEFAULT_PROMPT, UnknownModel, resolve_model, run_benchmark

    if plot_path is not None:
        _check_plot_available()
    config = load_or_exit(config_path).config
    try:
        resolve_model(config, model)
    except UnknownModel as exc:
        raise click.ClickException(str(exc)) from None
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    if not as_json:
        click.echo(
            f"benchmarking {model} on {config.llm_client.backend}: {n_requests} requests,"
            f" {concurrency} in flight, max_tokens {max_tokens}"
        )
    from .progress import Progress, wanted

    enabled = wanted(show_progress, as_json=as_json)
    bars: list[Progress] = []

    def progress(path: str) -> Callable[[int], None]:
        """One progress line per path (executor, then backend alone), the previous one ended."""
        if bars:
            bars[-1].finish()
        bars.append(Progress(path, n_requests, unit="requests", rate=True, enabled=enabled))
        return bars[-1].update

    result = uvloop.run(
        run_benchmark(
            config,
            model,
            requests=n_requests,
            concurrency=concurrency,
            prompt=prompt or DEFAULT_PROMPT,
            max_tokens=max_tokens,
            progress=progress,
        )
    )
    if bars:
        bars[-1].finish()
    data = result.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(
            f"served as {data['served_as']}; price offered"
            f" {data['price_wei']['inbound']}/{data['price_wei']['outbound']} wei per input/output token"
        )
        click.echo("")
        rows = []
        for label, s in (("executor (libp2p)", data["executor"]), ("backend alone", data["backend_only"])):
            lat = s["latency_s"]
            rows.append(
                [
                    label,
                    f"{s['successes']}/{s['requests']}",
                    s["errors"],
                    f"{s['throughput_rps']:.1f}" if s["throughput_rps"] is not None else "-",
                    _seconds(lat["p50"]),
                    _seconds(lat["p90"]),
                    _seconds(lat["p99"]),
                    _seconds(s["first_answer_s"]),
                    f"{s['tokens_in']}/{s['tokens_out']}",
                    f"{s['output_tokens_per_s']:.1f}" if s["output_tokens_per_s"] is not None else "-",
                    s.get("total_cost_wei", "-"),
                ]
            )
        print_table(
            ["path", "ok", "errors", "req/s", "p50", "p90", "p99", "cold answer", "tokens in/out", "out tok/s", "cost (wei)"],
            rows,
        )
        overhead = data["overhead"]
        click.echo("")
        if overhead["latency_p50_s"] is not None:
            ratio = overhead["throughput_ratio"]
            click.echo(
                f"executor overhead: {overhead['latency_p50_s'] * 1000:+.1f} ms at p50"
                + (f"; throughput {ratio:.3g}x the backend's alone" if ratio is not None else "")
            )
        receipts = data["executor"]["receipts_valid"]
        click.echo(f"receipts verified: {receipts}/{data['executor']['successes']}")
    if plot_path is not None:
        _write_plot(plot_path, result)
        if not as_json:
            click.echo(f"plot written to {plot_path}")
    failed = [(label, s) for label, s in (("executor", data["executor"]), ("backend alone", data["backend_only"])) if s["errors"]]
    for label, s in failed:
        for text in s["first_errors"]:
            click.echo(f"error ({label}): {text}", err=True)
    if failed:
        raise click.ClickException("; ".join(f"{s['errors']} request(s) failed ({label})" for label, s in failed))
