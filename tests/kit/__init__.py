"""The test kit: the layer harness, the independent references (NumPy formulas, PyTorch modules
written from the published structure), broken-file makers and the fresh-process reloader. Test
files import from here; nothing here imports a test file."""
