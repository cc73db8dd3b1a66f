"""The ``realcheck`` command: real imaging degraded to Euclid Wide, as stores for ``lensengine evaluate --check``.

Registered by the ``register_commands`` hook of
:mod:`lensengine.training.train_commands` (a built-in plugin).  numpy, scipy
and astropy are imported inside the command so that ``lensengine --help``
stays fast.  Exit codes: 0 success, 1 the job failed, 2 bad usage or bad input.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from lensengine.engine.options import echo_json, json_option, needs_extra


@click.command("realcheck")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for j0946.zarr, real_galaxies.zarr and realcheck.json.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Offsets and noise; the stores are identical for a given seed.")
@click.option("--real-root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Real-galaxy folder (default: $LENSENGINE_SHARED/real/galaxies or ../shared/real/galaxies).")
@click.option("--j0946", "j0946_root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="J0946 folder (default: next to the real-galaxy folder, real/hst_sdssj0946).")
@click.option("--roles", type=click.Choice(["all", "check", "sim"]), default="all", show_default=True,
              help="Which real galaxies: all, only the half the simulator never uses (check), or the other half.")
@click.option("--overwrite", is_flag=True, help="Replace existing stores.")
@json_option(help="Print the written files as JSON on stdout.")
@needs_extra("lenstronomy")
def realcheck_cmd(out, seed, real_root, j0946_root, roles, overwrite, as_json):
    """Degrade J0946 and the real galaxies (COSJ100020 included) to Euclid VIS + NISP with Euclid Wide noise.

    Writes OUT/j0946.zarr (one lens, label 1) and OUT/real_galaxies.zarr (non-lenses, label 0, truth
    'name' and 'role'), then score them against a simulated negative set, e.g.

      lensengine evaluate --lenses lenses.zarr --negatives sky=sky_neg.zarr
        --check j0946=OUT/j0946.zarr --check real=OUT/real_galaxies.zarr --out report/

    Method and assumptions (units, colours, PSF matching, noise): docs/realcheck.md.
    """
    from lensengine.training.realcheck import write_realcheck

    t0 = time.perf_counter()
    picked = ("sim", "check") if roles == "all" else (roles,)
    for name in ("j0946.zarr", "real_galaxies.zarr"):
        if (out / name).exists() and not overwrite:
            raise click.UsageError(f"{out / name} already exists: add --overwrite to replace it")
    try:
        paths = write_realcheck(out, seed, real_root=real_root, j0946_root=j0946_root, roles=picked,
                                overwrite=overwrite)
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc))
    if as_json:
        echo_json({**{k: str(v) for k, v in paths.items()}, "seconds": round(time.perf_counter() - t0, 3)})
        return
    click.echo(f"wrote {paths['j0946']}, {paths['real']} and {paths['manifest']} "
               f"in {time.perf_counter() - t0:.0f} s")
