"""Built-in plugin: the commands that need the training extra but belong to the engine's vocabulary.

``models import-published`` and ``models export`` build ONNX models from torch weights, and ``demo``
simulates the bundled example store before running the engine on it.  They live here, not in
``lensengine.engine``, so the engine never imports training code (docs/architecture.md); the plugin
adds them to the engine's ``models`` group and the root group through ``register_commands``.
"""

from __future__ import annotations

from pathlib import Path

import click

from lensengine.engine.run_cli import run_cmd
from lensengine.plugins import hookimpl


@click.command("import-published")
@click.argument("weights_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the seven ONNX files (and the torch weights beside them).")
@click.option("--model", "names", multiple=True, help="Only these models (repeatable); default all seven.")
def import_published_cmd(weights_dir: Path, out_dir: Path, names: tuple[str, ...]) -> None:
    """Convert the paper's published state_dicts (OU_*_Weights.pt) to lensengine ONNX models.

    Example: lensengine models import-published ../shared/published-weights --out models/published
    """
    from lensengine.training.export import import_published

    try:
        paths = import_published(weights_dir, out_dir, names or None)
    except (FileNotFoundError, KeyError, RuntimeError) as exc:
        raise click.UsageError(str(exc))
    for p in paths:
        click.echo(f"wrote {p}")


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="ONNX file to write.")
def export_cmd(checkpoint: Path, out_path: Path) -> None:
    """Export a training checkpoint (from `lensengine train`) to a self-describing ONNX model."""
    from lensengine.training.checkpoint import export_checkpoint

    click.echo(f"wrote {export_checkpoint(checkpoint, out_path)}")




@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("lensengine-demo"),
              show_default=True, help="Directory for the example store, the score table and the catalogue.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True, help="Local Dask workers.")
@click.pass_context
def demo_cmd(ctx, out_dir: Path, workers: int):
    """Make the bundled example survey store and run the whole job on it.

    Simulates a small Euclid-like store (lenses and non-lenses, about 200 cutouts;
    cached after the first run), scores it with the default models and the
    ensemble, and writes DIR/candidates.fits and DIR/candidates_scores.parquet.
    Needs no download and no GPU.  Running it again starts over (--restart).
    """
    from lensengine.training.simulate import example_store

    out_dir.mkdir(parents=True, exist_ok=True)
    store = example_store(out_dir / "example.zarr")
    click.echo(f"example store: {store}")
    ctx.invoke(run_cmd, store=Path(store), out=out_dir / "candidates.fits", scores=None, models_dir=None,
               model_names=(), ensemble_path=None, threshold=0.5, scheduler=None, tls_ca_file=None, tls_cert=None,
               tls_key=None, security_file=None, workers=workers, threads=0, dashboard=True, device="auto",
               batch_size=32, precision="fp32", explain_top=0, explain_model=None, resume=False, restart=True)


@hookimpl
def register_commands(cli):
    models = cli.commands["models"]
    models.add_command(import_published_cmd)
    models.add_command(export_cmd)
    cli.add_command(demo_cmd)
