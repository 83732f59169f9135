"""Export and sharing above the layers: ONNX graphs of rnnkit's layers and of the recipes' models (onnx.py)."""
from .onnx import (Graph, LayerForExport, Prediction, StepWithState, carrying_state, export_onnx,
                   language_model_step, many_to_one, operator_for, zero_state)

__all__ = ["Graph", "LayerForExport", "Prediction", "StepWithState", "carrying_state", "export_onnx",
           "language_model_step", "many_to_one", "operator_for", "zero_state"]
