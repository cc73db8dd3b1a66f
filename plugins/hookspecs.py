"""The hook specification: the contract between lensengine and its plugins.

Hooks are listed in pipeline order: models -> commands -> inference ->
post-processing -> catalogue -> reports.  A plugin implements any subset with
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


# --- reports ----------------------------------------------------------------

@hookspec
def register_reports():
    """Return reports this plugin provides, as a dict ``{name: callable}``, or None.

    Called by ``lensengine report``/``lensengine plugins``.  Each callable takes
    ``(scores_path, out_dir)`` and writes its files into ``out_dir``, returning
    the list of paths written.
    """
