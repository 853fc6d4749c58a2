"""Kept importable: the SavedModel exporter is `keras_attention.tflite.saved_model` (this name said "export"
beside `keras_attention.export`, ONNX/OpenVINO, without meaning the same)."""

from keras_attention.tflite.saved_model import export_saved_model  # noqa: F401
