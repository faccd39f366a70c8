"""VNN-COMP formats: ONNX networks (``onnx_net``), VNNLIB properties (``vnnlib``),
instances, result files and the 2021 score (``vnncomp``)."""
