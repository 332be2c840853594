"""The PyTorch side of lnm-deploy: LNM layers, training, the digits demo data, and IR export.

Needs the ``torch`` extra (``pip install 'lnm-deploy[torch]'``).
"""

from lnm_deploy.errors import DependencyError

try:
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise DependencyError("lnm_deploy.model needs PyTorch: pip install 'lnm-deploy[torch]'") from e

from lnm_deploy.model.builders import LNMGraph, init_batchnorm, resnet, vgg
from lnm_deploy.model.data import (
    DigitsSplit,
    current_encode,
    encode,
    load_digits_split,
    rate_encode,
)
from lnm_deploy.model.io import convert_legacy_model, load_model, save_model
from lnm_deploy.model.layers import (
    LNM,
    LNMSequential,
    RecurrentLNM,
    SumPool2d,
    horner,
    spike,
)
from lnm_deploy.model.to_ir import model_to_ir
from lnm_deploy.model.train import (
    DigitsResult,
    TrainHistory,
    build_digits_model,
    evaluate,
    predict,
    train,
    train_digits,
)

__all__ = [
    "LNM",
    "DigitsResult",
    "DigitsSplit",
    "LNMGraph",
    "LNMSequential",
    "RecurrentLNM",
    "SumPool2d",
    "TrainHistory",
    "build_digits_model",
    "convert_legacy_model",
    "current_encode",
    "encode",
    "evaluate",
    "horner",
    "init_batchnorm",
    "load_digits_split",
    "load_model",
    "model_to_ir",
    "predict",
    "rate_encode",
    "resnet",
    "save_model",
    "spike",
    "train",
    "train_digits",
    "vgg",
]
