"""lensengine.training."""
