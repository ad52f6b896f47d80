"""edgeship's host side: convert, validate, sign and bundle models; push them to devices.

May import ``runtime`` and ``devices``; heavy dependencies (onnx, skl2onnx, scikit-learn) live here.
"""
