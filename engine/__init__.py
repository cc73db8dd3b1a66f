"""lensengine.engine."""
