"""The default models shipped with lensengine (ONNX files and the model card)."""
