"""lensengine's plugin system (pluggy).

Plugin authors import one thing::

    from lensengine.plugins import hookimpl

and implement hooks from :mod:`lensengine.plugins.hookspecs`.  External
plugins register through the ``lensengine`` entry-point group.
"""

from lensengine.plugins.hookspecs import hookimpl, hookspec

__all__ = ["hookimpl", "hookspec"]
