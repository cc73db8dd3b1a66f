"""lensengine: survey-scale strong gravitational lens finding.

The distribution maps its top-level folders into this namespace:
``lensengine.engine`` (inference on Dask), ``lensengine.catalogs`` (store and
catalogue formats), ``lensengine.plugins`` (hook specification and built-in
plugins), ``lensengine.training`` (simulation, training, export; needs the
``training`` extra) and ``lensengine.models`` (the shipped default models).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
