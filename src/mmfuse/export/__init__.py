"""Export a trained model to ONNX and serve the export with onnxruntime.

Example:
    >>> from mmfuse.export import export_onnx, load_exported
    >>> export_onnx("runs/soc", "exports/soc")["max_abs_diff"]
    >>> load_exported("exports/soc").predict([{"image": "img.png", "question": "Is it red?"}])

onnx and onnxruntime (``pip install 'mmfuse[export]'``) are imported on first use.
"""

from .onnx import export_onnx, load_exported

__all__ = ["export_onnx", "load_exported"]
