"""The PyTorch side of lnm-deploy: LNM layers, training, the digits demo data, dataset readers
(CIFAR-10, N-MNIST; ``datasets``), and IR export.

Needs the ``torch`` extra (``pip install 'lnm-deploy[torch]'``).
"""

from lnm_deploy.errors import DependencyError

try:
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise DependencyError("lnm_deploy.model needs PyTorch: pip install 'lnm-deploy[torch]'") from e

from lnm_deploy.model.adaptive import AdaptiveLNM  # registers the layer type (load_model, export)
from lnm_deploy.model.builders import LNMGraph, init_batchnorm, resnet, vgg
from lnm_deploy.model.data import (
    DigitsSplit,
    current_encode,
    encode,
    load_digits_split,
    rate_encode,
)
from lnm_deploy.model.datasets import (
    EventSamples,
    events_to_frames,
    load_cifar10,
    load_nmnist,
    nmnist_frames,
    rate_encode_images,
    read_cifar10_batch,
    read_nmnist_file,
    write_spike_npz,
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
    train_digits_cnn,
)

__all__ = [
    "LNM",
    "AdaptiveLNM",
    "DigitsResult",
    "DigitsSplit",
    "EventSamples",
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
    "events_to_frames",
    "horner",
    "init_batchnorm",
    "load_cifar10",
    "load_digits_split",
    "load_model",
    "load_nmnist",
    "model_to_ir",
    "nmnist_frames",
    "predict",
    "rate_encode",
    "rate_encode_images",
    "read_cifar10_batch",
    "read_nmnist_file",
    "resnet",
    "save_model",
    "spike",
    "train",
    "train_digits",
    "train_digits_cnn",
    "vgg",
    "write_spike_npz",
]
