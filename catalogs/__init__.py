"""lensengine.catalogs."""
