"""ONNX backend: the deployed integer network as one portable ONNX model (``docs/onnx.md``).

``build_onnx`` turns an ``FxGraph`` into an ``onnx.ModelProto`` that computes
``docs/fixed-point.md`` bit for bit (integer tensors, a Scan over time); ``run_onnx`` runs it with
onnxruntime on the CPU; ``compile_onnx`` writes the model of an artifact file. onnx and
onnxruntime are imported only when these functions are called (``pip install 'lnm-deploy[onnx]'``).
"""

from lnm_deploy.onnx_backend.build import (
    IR_VERSION,
    OPSET,
    Builder,
    NeuronLowering,
    build_onnx,
    register_lowering,
    register_neuron_lowering,
    supported_kinds,
    unregister_lowering,
)
from lnm_deploy.onnx_backend.run import (
    compile_onnx,
    model_layout,
    onnx_session,
    run_onnx,
    run_onnx_model,
    sha256_file,
)

__all__ = [
    "IR_VERSION",
    "OPSET",
    "Builder",
    "NeuronLowering",
    "build_onnx",
    "compile_onnx",
    "model_layout",
    "onnx_session",
    "register_lowering",
    "register_neuron_lowering",
    "run_onnx",
    "run_onnx_model",
    "sha256_file",
    "supported_kinds",
    "unregister_lowering",
]
