"""Built-in plugin: the commands that need the training extra but belong to the engine's vocabulary.

``models import-published``, ``models export`` and ``models tta`` build ONNX models from torch weights, and ``demo``
simulates the bundled example store before running the engine on it.  They live here, not in
``lensengine.engine``, so the engine never imports training code (docs/architecture.md); the plugin
adds them to the engine's ``models`` group and the root group through ``register_commands``.
"""

from __future__ import annotations

from pathlib import Path

import click

from lensengine.engine.options import echo_json, json_option, model_names_option, needs_extra
from lensengine.engine.run_cli import run_cmd
from lensengine.plugins import hookimpl


@click.command("import-published")
@click.argument("weights_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the seven ONNX files (and the torch weights beside them).")
@model_names_option()
@json_option(help="Print the written files as JSON on stdout.")
@needs_extra("torch", "onnx")
def import_published_cmd(weights_dir: Path, out_dir: Path, model_names: tuple[str, ...], as_json: bool) -> None:
    """Convert the paper's published state_dicts (OU_*_Weights.pt) to lensengine ONNX models.

    Example: lensengine models import-published ../shared/published-weights --out models/published
    """
    from lensengine.training.export import import_published

    try:
        paths = import_published(weights_dir, out_dir, model_names or None)
    except (FileNotFoundError, KeyError, RuntimeError) as exc:
        raise click.UsageError(str(exc))
    if as_json:
        echo_json({"written": [str(p) for p in paths]})
        return
    for p in paths:
        click.echo(f"wrote {p}")


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="ONNX file to write.")
@json_option(help="Print the written file as JSON on stdout.")
@needs_extra("torch", "onnx")
def export_cmd(checkpoint: Path, out_path: Path, as_json: bool) -> None:
    """Export a training checkpoint (from `lensengine train`) to a self-describing ONNX model."""
    from lensengine.training.checkpoint import export_checkpoint

    _say_written(export_checkpoint(checkpoint, out_path), as_json)


def _say_written(path: Path, as_json: bool) -> None:
    """Name the file a command wrote: JSON on stdout with --json, else a line."""
    if as_json:
        echo_json({"written": [str(path)]})
    else:
        click.echo(f"wrote {path}")


@click.command("tta")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="ONNX file to write (the torch weights are copied beside it).")
@json_option(help="Print the written file as JSON on stdout.")
@needs_extra("torch", "onnx")
def tta_cmd(model: Path, out_path: Path, as_json: bool) -> None:
    """Write a model that scores each cutout in its eight flips and rotations (test-time augmentation).

    P(lens) becomes the logistic of the network's mean log-odds over the eight views: steadier scores and
    higher recall at a low false-positive rate (models/README.md, "Test-time augmentation"), for seven to
    nine times the inference cost of that model (measured for OU-66 and OU-VIS).  The new file keeps the model's name, bands and weights, and says
    `tta` in its metadata (`lensengine models info`).  A stacked ensemble or OU-T-SNE fitted on the plain
    model's scores must be fitted again on the new scores; so must the cascade's gates.  The torch runners
    (`--precision bf16`) average the same eight views; `lensengine explain` explains the bare network.

    Example: lensengine models tta models/OU_VIS.onnx --out models_tta/OU_VIS.onnx
    """
    from lensengine.engine.models import ContractError
    from lensengine.training.export import export_tta

    try:
        written = export_tta(model, out_path)
    except (ContractError, FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc))
    _say_written(written, as_json)


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("lensengine-demo"),
              show_default=True, help="Directory for the example store, the score table and the catalogue.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True, help="Local Dask workers.")
@json_option(help="Print the run summary as JSON on stdout (as `lensengine run --json`).")
@needs_extra("lenstronomy", "skypy", "speclite")
@click.pass_context
def demo_cmd(ctx, out_dir: Path, workers: int, as_json: bool):
    """Make the bundled example survey store and run the whole job on it.

    Simulates a small Euclid-like store (lenses and non-lenses, about 200 cutouts;
    cached after the first run), scores it with the default models and the
    ensemble, and writes DIR/candidates.fits and DIR/candidates_scores.parquet.
    Needs no download and no GPU.  Running it again starts over (--restart).
    """
    from lensengine.training.simulate import example_store

    out_dir.mkdir(parents=True, exist_ok=True)
    store = example_store(out_dir / "example.zarr")
    click.echo(f"example store: {store}", err=as_json)
    # every other run option keeps its default (ctx.invoke fills them in), as `lensengine run` would
    ctx.invoke(run_cmd, store=Path(store), out=out_dir / "candidates.fits", workers=workers, restart=True,
               as_json=as_json)


@hookimpl
def register_commands(cli):
    models = cli.commands["models"]
    models.add_command(import_published_cmd)
    models.add_command(export_cmd)
    models.add_command(tta_cmd)
    cli.add_command(demo_cmd)
