"""The hook specification: the contract between lensengine and its plugins.

Hooks are listed in pipeline order: models -> commands -> inference ->
post-processing -> catalogue -> reports.  The engine reaches everything that
needs torch (reduced-precision runners, interpretability maps) through these
hooks and never by importing a plugin.  A plugin implements any subset with
``@hookimpl`` (``from lensengine.plugins import hookimpl``); built-in plugins
use exactly the same hooks as third-party ones, which register through the
``lensengine`` entry-point group.
"""

from __future__ import annotations

import pluggy

PROJECT = "lensengine"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- models -----------------------------------------------------------------

@hookspec
def register_models():
    """Return the models this plugin provides, or None.

    Called once when the engine resolves models (``lensengine run``,
    ``lensengine models list``).  Return a list of
    :class:`lensengine.engine.models.ModelEntry` (name, ONNX path and the
    input contract: ordered bands and stamp size).  A later plugin that
    registers a name already taken is an error reported at start-up.
    """


# --- commands ---------------------------------------------------------------

@hookspec
def register_commands(cli):
    """Add sub-commands to the ``lensengine`` command line.

    Called once when the CLI starts, before arguments are parsed.  ``cli`` is
    the root :class:`click.Group`; call ``cli.add_command(...)``.  Returns
    nothing.
    """


# --- inference --------------------------------------------------------------

@hookspec(firstresult=True)
def prepare_session(model_name, providers):
    """Adjust the ONNX Runtime execution providers for one model, or return None.

    Called on each Dask worker when it builds the session for ``model_name``;
    ``providers`` is the list the engine chose (e.g. ``["CUDAExecutionProvider",
    "CPUExecutionProvider"]``).  Return a new list to override it.  The first
    non-None answer wins (``firstresult``): exactly one provider list can be
    used.
    """


@hookspec(firstresult=True)
def make_runner(model, precision, threads):
    """Return a callable that scores one model in a precision ONNX Runtime does not cover, or None.

    Called once per worker process and model when a run's runner for it is
    not an ONNX Runtime or OpenVINO one (``--precision bf16``, or ``--runner
    torch-bf16|torch-compile-fp32|torch-compile-bf16``, engine/runners.py).
    ``model`` is the :class:`~lensengine.engine.models.ModelEntry`,
    ``precision`` the runner's name (``"torch-bf16"``, …; ``"bf16"`` from
    older callers), ``threads`` the CPU threads to use (0: the library's
    default).  Return ``run(x) -> p``: ``x`` float32 (N, C, S, S) as the
    preprocessor makes it, ``p`` (N,) P(lens).  The built-in torch runner
    answers the three torch runners from the ``.pt`` weights beside the ONNX
    file.  The first non-None answer wins (``firstresult``): one runner
    scores a model.
    """


# --- post-processing ----------------------------------------------------------

@hookspec
def process_batch(batch, context):
    """Add columns to a scored batch; return a dict ``{column: array}`` or None.

    Called on the worker for every chunk after all models and the ensemble have
    scored it.  ``batch`` is a dict of NumPy arrays of equal length (``OBJECT_ID``,
    ``RA``, ``DEC``, ``FLAGS``, one ``P_<MODEL>`` per model, ``P_ENSEMBLE`` ...);
    ``context`` is a dict with ``tile``, ``chunk`` and ``store`` (path).  Each
    returned array must have the batch's length; its column goes into the score
    table and the candidate catalogue.
    """


# --- catalogue ----------------------------------------------------------------

@hookspec
def catalog_provenance():
    """Return extra provenance cards for the candidate catalogue header, or None.

    Called once when the catalogue is written.  Return a dict of short
    (<= 8 characters) keys to ``(value, comment)`` tuples.
    """


@hookspec(firstresult=True)
def explain_candidates(model, store, rows, out_dir):
    """Write interpretability maps for the best candidates of a run; return ``{object_id: {method: path}}``.

    Called once, on the client, after the catalogue is written, when
    ``lensengine run --explain-top K`` asks for maps.  ``model`` is the
    :class:`~lensengine.engine.models.ModelEntry` to explain, ``store`` the
    open :class:`~lensengine.catalogs.store.SurveyStore`, ``rows`` a list of
    ``(tile, row, object_id)`` in rank order, ``out_dir`` the folder to write
    into.  The built-in interpretability plugin answers with occlusion and
    guided Grad-CAM maps (torch).  The first non-None answer wins
    (``firstresult``): one plugin makes the maps.
    """


# --- reports ----------------------------------------------------------------

@hookspec
def register_reports():
    """Return reports this plugin provides, as a dict ``{name: callable}``, or None.

    Called by ``lensengine report SCORES --out DIR``, which runs every
    registered report (or those named with ``--name``) on a finished score
    table.  Each callable takes ``(scores_path, out_dir)`` and writes its
    files into ``out_dir``, returning the list of paths written.
    ``scores_path`` is a single Parquet file or a run's score-table folder (a
    dataset partitioned by tile): read it with
    ``lensengine.catalogs.catalog.read_scores``, which takes both.
    """
