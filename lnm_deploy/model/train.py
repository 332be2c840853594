"""Training and evaluation of LNM networks (BPTT with surrogate gradients), and the digits demo.

The class scores are the output layer's spike counts over time; the loss is the cross-entropy of
``loss_scale * counts`` and the prediction is ``argmax(counts)`` with ties going to the lowest class
index, so what is trained on is what is deployed (spikes).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lnm_deploy.errors import UserInputError
from lnm_deploy.model.builders import init_batchnorm, resnet, vgg
from lnm_deploy.model.data import DigitsSplit, Encoding, encode, load_digits_split
from lnm_deploy.model.layers import LNM, LNMSequential, RecurrentLNM
from lnm_deploy.progress import progress as progress_bar


@dataclass
class TrainHistory:
    """Per-epoch mean loss and running train accuracy, and the wall time in seconds."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _tensor(x: np.ndarray | Tensor, dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).to(dtype)


def spike_counts(out: Tensor) -> Tensor:
    """Spike counts per class ``(B, n_classes)`` from output spikes ``(B, T, *shape)``."""
    return out.sum(dim=1).flatten(1)


def predict_counts(counts: np.ndarray) -> np.ndarray:
    """``argmax`` of counts; ``np.argmax`` returns the first maximum, so ties go to the lowest index."""
    return np.argmax(np.asarray(counts), axis=1)


def train(
    model: LNMSequential,
    x_train: np.ndarray | Tensor,
    y_train: np.ndarray | Tensor,
    epochs: int = 20,
    lr: float = 5e-3,
    batch_size: int = 64,
    reg_weight: float = 1e-2,
    seed: int = 0,
    progress: bool = True,
    loss_scale: float = 1.0,
) -> TrainHistory:
    """Train ``model`` in place: Adam with cosine lr decay (to 5%) per batch on
    ``CE(loss_scale * counts) + reg_weight * regularization``.

    Args:
        x_train: input spikes/currents ``(N, T, *input_shape)``; cast to the model's dtype.
        y_train: integer labels ``(N,)``.
        seed: seeds the batch shuffling (a private generator; global RNG state is untouched).
        progress: show a tqdm bar with loss and running accuracy.
    """
    x = _tensor(x_train, model.dtype)
    y = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    if x.shape[0] != y.shape[0]:
        raise UserInputError(f"{x.shape[0]} samples but {y.shape[0]} labels")
    if epochs < 1 or batch_size < 1:
        raise UserInputError("epochs and batch_size must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    # Cosine decay per batch to 5% of lr: late large steps on a spiking loss leave the final
    # weights noticeably worse than the epoch's running accuracy suggests.
    n_steps = epochs * -(-x.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_steps, eta_min=0.05 * lr)
    hist = TrainHistory()
    t0 = time.perf_counter()
    model.train()
    bar = progress_bar(range(epochs), desc="train", unit="epoch", enabled=progress)
    for _ in bar:
        perm = torch.randperm(x.shape[0], generator=gen)
        tot_loss, correct, seen = 0.0, 0, 0
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i : i + batch_size]
            counts = spike_counts(model(x[idx]))
            loss = F.cross_entropy(loss_scale * counts, y[idx])
            if reg_weight:
                loss = loss + reg_weight * model.regularization()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += float(loss.detach()) * len(idx)
            correct += int((predict_counts(counts.detach().numpy()) == y[idx].numpy()).sum())
            seen += len(idx)
        bar.set_postfix(loss=f"{tot_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        hist.loss.append(tot_loss / seen)
        hist.accuracy.append(correct / seen)
    bar.close()
    hist.seconds = time.perf_counter() - t0
    model.eval()
    return hist


@torch.no_grad()
def predict(model: LNMSequential, x: np.ndarray | Tensor, batch_size: int = 512) -> np.ndarray:
    """Predicted class per sample (argmax of output spike counts, ties to the lowest index)."""
    xt = _tensor(x, model.dtype)
    was_training = model.training
    model.eval()
    counts = [spike_counts(model(xt[i : i + batch_size])).numpy() for i in range(0, xt.shape[0], batch_size)]
    model.train(was_training)
    return predict_counts(np.concatenate(counts, axis=0))


def evaluate(model: LNMSequential, x: np.ndarray | Tensor, y: np.ndarray | Tensor, batch_size: int = 512) -> float:
    """Accuracy in [0, 1] of :func:`predict` against labels ``y``."""
    pred = predict(model, x, batch_size)
    return float(np.mean(pred == np.asarray(y)))


def build_digits_model(
    degree: int = 2,
    hidden: int = 64,
    synapse: bool = False,
    recurrent: bool = False,
    seed: int = 0,
    n_in: int = 64,
    n_out: int = 10,
    dtype: torch.dtype | None = None,
    **lnm_kwargs: Any,
) -> LNMSequential:
    """``fc1 -> lnm1 (or rlnm1) -> fc2 -> lnm2``: an MLP of LNM neurons for the 8x8 digits.

    Weights are drawn under ``seed`` without touching the global RNG state. ``dtype`` (default
    torch's default) is used from construction on; ``lnm_kwargs`` go to both LNM layers.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hidden_layer: LNM = (
            RecurrentLNM(hidden, degree, synapse=synapse, dtype=dtype, **lnm_kwargs)
            if recurrent
            else LNM(hidden, degree, synapse=synapse, dtype=dtype, **lnm_kwargs)
        )
        if recurrent:
            assert isinstance(hidden_layer, RecurrentLNM)
            nn.init.normal_(hidden_layer.rec.weight, std=0.1 / hidden**0.5)
        return LNMSequential(
            nn.Linear(n_in, hidden, dtype=dtype),
            hidden_layer,
            nn.Linear(hidden, n_out, dtype=dtype),
            LNM(n_out, degree, synapse=synapse, dtype=dtype, **lnm_kwargs),
        )


@dataclass
class DigitsResult:
    """Outcome of :func:`train_digits`; accuracies in [0, 1], ``seconds`` of training wall time."""

    model: LNMSequential
    history: TrainHistory
    train_accuracy: float
    test_accuracy: float
    seconds: float
    data: DigitsSplit
    x_test: np.ndarray


def train_digits(
    degree: int = 2,
    hidden: int = 64,
    synapse: bool = False,
    recurrent: bool = False,
    steps: int = 16,
    encoding: Encoding = "rate",
    max_rate: float = 1.0,
    epochs: int = 15,
    lr: float = 5e-3,
    batch_size: int = 64,
    reg_weight: float = 1e-2,
    seed: int = 0,
    progress: bool = True,
    num_threads: int | None = 1,
) -> DigitsResult:
    """Train the digits demo end to end (encode, build, train, evaluate on the held-out 20%).

    ``num_threads`` sets ``torch.set_num_threads`` for the duration of the call (restored after;
    None leaves it). The default 1 is deliberate: the matmuls are small, so a second thread buys
    nothing, while on a loaded 2-core machine it made training 2-8x slower; one thread also makes
    the result independent of the machine's core count.
    """
    data = load_digits_split(seed=seed)
    x_tr = encode(data.x_train, steps, encoding, max_rate=max_rate, seed=seed)
    x_te = encode(data.x_test, steps, encoding, max_rate=max_rate, seed=seed + 1)
    model = build_digits_model(degree, hidden, synapse=synapse, recurrent=recurrent, seed=seed)
    with torch_threads(num_threads):
        hist = train(model, x_tr, data.y_train, epochs, lr, batch_size, reg_weight, seed, progress)
    return DigitsResult(
        model=model,
        history=hist,
        train_accuracy=evaluate(model, x_tr, data.y_train),
        test_accuracy=evaluate(model, x_te, data.y_test),
        seconds=hist.seconds,
        data=data,
        x_test=x_te,
    )


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(num_threads)`` for the block (None: leave it), restored after."""
    old = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_digits_cnn(arch: str = "vgg", channels: tuple[int, ...] = (8, 16), degree: int = 1, steps: int = 8, *,
                     seed: int = 0, max_rate: float = 1.0, epochs: int = 10, lr: float = 1e-2, batch_size: int = 64,
                     reg_weight: float = 1e-2, progress: bool = True, num_threads: int | None = 1) -> DigitsResult:
    """Train a convolutional LNM network on the 8x8 digits as ``1x8x8`` images (no download).

    The digits (``load_digits_split(seed=seed)``, stratified 80/20) are rate-encoded
    (``rate_encode``, Bernoulli ``p = pixel / 16 * max_rate`` per step, ``steps`` steps; test
    spikes from ``seed + 1``) and reshaped to ``(N, steps, 1, 8, 8)`` float32 0/1. The network is
    ``builders.vgg`` (``arch="vgg"``: per stage conv3x3 -> BatchNorm -> LNM -> MaxPool2d(2)) or
    ``builders.resnet`` (``arch="resnet"``) with ``channels`` and LNM ``degree`` (1: the stock
    LIF on loihi2), weights drawn under ``seed`` without touching the global RNG, BatchNorm
    statistics initialised from the training spikes (``init_batchnorm``), then trained with
    :func:`train` (surrogate gradients, BPTT). ``num_threads`` as in :func:`train_digits`.

    Returns:
        a ``DigitsResult`` whose ``x_test`` is the ``(N, steps, 1, 8, 8)`` test spikes; export the
        model with ``model_to_ir(result.model, (1, 8, 8))``.

    Raises:
        UserInputError: an unknown ``arch``, or arguments the builders / ``train`` refuse.
    """
    builders = {"vgg": vgg, "resnet": resnet}
    if arch not in builders:
        raise UserInputError(f"arch must be one of {sorted(builders)}, got {arch!r}")
    data = load_digits_split(seed=seed)
    x_tr = encode(data.x_train, steps, "rate", max_rate=max_rate, seed=seed).reshape(-1, steps, 1, 8, 8)
    x_te = encode(data.x_test, steps, "rate", max_rate=max_rate, seed=seed + 1).reshape(-1, steps, 1, 8, 8)
    with torch_threads(num_threads):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = builders[arch](input_shape=(1, 8, 8), channels=channels, classes=10, degree=degree)
        init_batchnorm(model, torch.as_tensor(x_tr))
        hist = train(model, x_tr, data.y_train, epochs, lr, batch_size, reg_weight, seed, progress)
        train_acc, test_acc = evaluate(model, x_tr, data.y_train), evaluate(model, x_te, data.y_test)
    return DigitsResult(model=model, history=hist, train_accuracy=train_acc, test_accuracy=test_acc,
                        seconds=hist.seconds, data=data, x_test=x_te)
