"""``AdaptiveLNM``: the LNM layer with an adaptive threshold, trainable with surrogate gradients.

The membrane is the ``LNM``'s (its polynomial, synapse, reset, regulariser); ``v_th`` is the
resting threshold ``theta_0``, and the threshold state follows (``docs/adaptive.md``)::

    theta[0] = theta_0
    s[t] = v'[t] > theta[t];  reset against theta[t]
    theta[t+1] = theta_0 + d_theta * (theta[t] - theta_0) + theta_step * s[t]

``d_theta`` (``theta_decay_value()``, clamped into [0, 1]) and ``theta_step`` are learnable, per
layer, channel or neuron (``theta_granularity``). With ``refractory_decay`` (``d_r`` in [0, 1],
fixed, per layer) the membrane is not reset: a refractory state ``r[t] = d_r r[t-1]`` is
subtracted before the spike test (``s[t] = v'[t] - r[t] > theta[t]``) and jumps by
``2 theta[t]`` at a spike (Lava's ATRLIF, which this maps onto exactly at degree 1). Exported as ``lnm_deploy.adaptive.AdaptiveNeuron``
(the converter registered below), evaluated in the same order so float64 agrees bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lnm_deploy.adaptive import AdaptiveNeuron
from lnm_deploy.errors import UserInputError
from lnm_deploy.model.layers import (
    GRANULARITIES,
    LNM,
    ConfigReader,
    Granularity,
    _param_shape,
    horner,
    register_layer_type,
    spike,
)
from lnm_deploy.model.to_ir import LayerNodes, converts, neuron_node


#: The smallest ``1 - d_theta`` the threshold regulariser assumes (``AdaptiveLNM.threshold_range``).
THETA_MIN_LEAK = 0.01


class AdaptiveLNM(LNM):
    """An ``LNM`` whose threshold adapts (module docstring).

    Args (beyond ``LNM``'s): theta_decay: initial ``d_theta`` per step in [0, 1]; theta_step:
    initial jump of the threshold per spike (membrane units); theta_granularity: ``"layer"``,
    ``"channel"`` or ``"neuron"``; learn_theta: whether both are ``nn.Parameter``s;
    refractory_decay: ``d_r`` of the refractory state (None: the ``LNM``'s reset).
    """

    theta_decay: Tensor
    theta_step: Tensor

    def __init__(self, shape: int | Iterable[int], degree: int = 2, *, theta_decay: float = 0.9,
                 theta_step: float = 0.2, theta_granularity: Granularity = "layer", learn_theta: bool = True,
                 refractory_decay: float | None = None, **kwargs: Any) -> None:
        super().__init__(shape, degree, **kwargs)
        if refractory_decay is not None and not 0.0 <= float(refractory_decay) <= 1.0:
            raise UserInputError(f"refractory_decay must lie in [0, 1], got {refractory_decay}")
        self.refractory_decay = None if refractory_decay is None else float(refractory_decay)
        self.theta_granularity = theta_granularity
        ashape = _param_shape(self.shape, theta_granularity, "theta")
        dtype = self.theta_raw.dtype
        self._register("theta_decay", torch.full(ashape, float(theta_decay), dtype=dtype), learn_theta)
        self._register("theta_step", torch.full(ashape, float(theta_step), dtype=dtype), learn_theta)

    def theta_decay_value(self) -> Tensor:
        """``d_theta`` used in the forward pass (clamped into [0, 1])."""
        return self.theta_decay.clamp(0.0, 1.0)

    def threshold_range(self) -> tuple[Tensor, Tensor]:
        """``(low, high)``: the range the threshold can reach under any spike train, from
        ``theta[t+1] - theta_0 = d (theta[t] - theta_0) + step s[t]`` with ``0 <= d <= 1``: the
        geometric sums ``theta_0 + min(step, 0) / (1 - d)`` and ``theta_0 + max(step, 0) / (1 - d)``
        (firing at every step), ``1 - d`` held at least ``THETA_MIN_LEAK`` (a non-decaying
        threshold reaches ``theta_0 + step / THETA_MIN_LEAK`` in that many spikes)."""
        leak = (1.0 - self.theta_decay_value()).clamp_min(THETA_MIN_LEAK)
        theta0 = self.v_th
        return theta0 + self.theta_step.clamp(max=0.0) / leak, theta0 + self.theta_step.clamp(min=0.0) / leak

    def regularization(self) -> Tensor:
        """``LNM.regularization`` (the membrane's leak) plus the threshold's, as for the
        polynomial: the threshold map ``theta -> theta_0 + d (theta - theta_0) + step s`` is
        non-expanding by construction (``d`` clamped into [0, 1]); it must also stay positive
        whatever the neuron fires, else the neuron fires at every step and, with a negative jump,
        the threshold runs away downward:

            R_theta = mean(relu(-low)**2)        (``low`` from ``threshold_range``)

        0 for a non-negative jump above a positive ``theta_0`` (the default initialisation)."""
        low, _ = self.threshold_range()
        return super().regularization() + torch.relu(-low).pow(2).mean()

    def config(self) -> dict[str, Any]:
        return {**super().config(), "theta_granularity": self.theta_granularity,
                "learn_theta": "theta_step" in self._parameters, "refractory_decay": self.refractory_decay}

    @classmethod
    def _config_kwargs(cls, r: ConfigReader) -> dict[str, Any]:
        return {**super()._config_kwargs(r), "theta_granularity": r.get_str("theta_granularity", GRANULARITIES),
                "learn_theta": r.get_bool("learn_theta"), "refractory_decay": r.get_opt_float("refractory_decay")}

    def forward(self, x: Tensor, record: bool = False) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """As ``LNM.forward``; ``record`` adds ``"theta"`` (the next step's threshold)."""
        if tuple(x.shape[2:]) != self.shape or x.dim() != 2 + len(self.shape):
            raise ValueError(f"AdaptiveLNM expects input (B, T, *{self.shape}), got {tuple(x.shape)}")
        x = x.to(self.theta_raw.dtype)
        poly, alpha = self.poly_value(), self.alpha_value()
        d, jump, theta0 = self.theta_decay_value(), self.theta_step, self.v_th
        v = torch.zeros_like(x[:, 0])
        c = torch.zeros_like(x[:, 0]) if alpha is not None else None
        theta = theta0 + torch.zeros_like(x[:, 0])
        d_r = self.refractory_decay
        r = torch.zeros_like(x[:, 0]) if d_r is not None else None
        ss, vs, cs, ths, rs = [], [], [], [], []
        for t in range(x.shape[1]):
            i_t = x[:, t]
            if c is not None and alpha is not None:
                c = alpha * c + i_t
                i_t = c
                cs.append(c)
            v_new = horner(poly, v) + i_t
            if r is not None and d_r is not None:  # refractoriness: no reset; r decays, is tested, jumps
                r = d_r * r
                s = spike(v_new - r, theta, self.surrogate_slope, self.surrogate)
                v = v_new
                r = r + 2.0 * theta * s
                rs.append(r)
            else:
                fired = v_new > theta
                s = spike(v_new, theta, self.surrogate_slope, self.surrogate)
                v = torch.where(fired, self.v_reset, v_new) if self.reset == "value" else \
                    torch.where(fired, v_new - theta, v_new)
            theta = theta0 + d * (theta - theta0) + jump * s
            ss.append(s)
            vs.append(v)
            ths.append(theta)
        out = torch.stack(ss, dim=1)
        if self.training and torch.is_grad_enabled():
            self._observe(vs)
        if not record:
            return out
        rec = {"s": out, "v": torch.stack(vs, dim=1), "theta": torch.stack(ths, dim=1)}
        if cs:
            rec["c"] = torch.stack(cs, dim=1)
        if rs:
            rec["r"] = torch.stack(rs, dim=1)
        return out, rec


def _full(t: Tensor, shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(t.detach().cpu().double().numpy(), shape).copy()


@converts(AdaptiveLNM)
def _adaptive(name: str, layer: AdaptiveLNM, dt: float) -> LayerNodes:
    base = neuron_node(layer, dt)
    fields = {k: getattr(base, k) for k in ("shape", "poly", "v_th", "v_reset", "reset", "in_gain", "syn_decay",
                                             "syn_gain", "dt", "metadata")}
    fields["metadata"] = {**fields["metadata"], "theta_granularity": layer.theta_granularity}
    rd = None if layer.refractory_decay is None else np.full(layer.shape, layer.refractory_decay)
    return [(name, AdaptiveNeuron(**fields, theta_decay=_full(layer.theta_decay_value(), layer.shape),
                                  theta_step=_full(layer.theta_step, layer.shape), refractory_decay=rd))]


def _from_config(cfg: Mapping[str, Any]) -> AdaptiveLNM:
    return AdaptiveLNM.from_config(cfg)


register_layer_type("AdaptiveLNM", AdaptiveLNM, AdaptiveLNM.config, _from_config)
