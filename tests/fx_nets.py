"""Random integer networks for the fxsim differential tests (oracle and Lava).

Parameters are drawn with a numpy Generator seeded by hypothesis, biased towards the edges that
matter: weights Lava clips or truncates, states at the wrap and saturation limits, decays at 0 and
4095, large weight exponents.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lnm_deploy import fixedpoint as fx

H23 = 2**23


def pick(rng: np.random.Generator, edges: list[int], lo: int, hi: int, p_edge: float = 0.4) -> int:
    if rng.random() < p_edge:
        return int(edges[rng.integers(len(edges))])
    return int(rng.integers(lo, hi + 1))


def weights(rng: np.random.Generator, shape: tuple[int, ...], *, wild: bool) -> np.ndarray:
    mode = rng.integers(4)
    if mode == 0:
        w = rng.integers(0, 300 if wild else 256, shape)
    elif mode == 1:
        w = -rng.integers(0, 300 if wild else 256, shape)
    else:
        w = rng.integers(-300 if wild else -256, 300 if wild else 256, shape)
    w[rng.random(shape) < 0.3] = 0
    return w


def dense(rng: np.random.Generator, n_out: int, n_in: int, *, wild: bool = True,
          sign_modes: bool = True) -> fx.FxDense:
    w = weights(rng, (n_out, n_in), wild=wild)
    if sign_modes:
        from lnm_deploy.fixedpoint import sign_mode_of

        mode = sign_mode_of(w) if rng.random() < 0.7 else str(rng.choice(["mixed", "excitatory", "inhibitory"]))
    else:
        mode = "mixed"
    return fx.FxDense(
        weight=w,
        weight_exp=pick(rng, [-8, 0, 6, 12, 16, 24], -4, 4, 0.3),
        num_weight_bits=int(rng.integers(1, 9)) if rng.random() < 0.5 else 8,
        sign_mode=mode,  # type: ignore[arg-type]
    )


def lif(rng: np.random.Generator, shape: tuple[int, ...], *, edges: bool = True) -> fx.FxLIF:
    n = int(np.prod(shape))
    u0 = np.zeros(n, dtype=np.int64)
    v0 = np.zeros(n, dtype=np.int64)
    if edges and rng.random() < 0.5:
        u0 = rng.choice([H23, -H23 + 1, H23 - 5, 0, 1000, -(2**22)], n)
        v0 = rng.choice([H23 - 1, -H23 + 1, H23 - 100, 0, -5000], n)
    return fx.FxLIF(
        shape=shape,
        du=pick(rng, [0, 1, 4094, 4095], 0, 4095),
        dv=pick(rng, [0, 1, 4095], 0, 4095),
        vth=pick(rng, [0, 1, 2**17 - 1], 0, 2000, 0.3),
        bias_mant=rng.integers(-4096, 4096, n).reshape(shape) * (rng.random() < 0.6),
        bias_exp=rng.integers(0, 8, n).reshape(shape),
        u_init=u0.reshape(shape),
        v_init=v0.reshape(shape),
    )


def poly(rng: np.random.Generator, shape: tuple[int, ...], *, small: bool = True) -> fx.FxPoly:
    n = int(np.prod(shape))
    degree = int(rng.integers(0, 4))
    state_bits = int(rng.choice([24, 16, 12])) if small else 24
    acc_bits = int(rng.choice([32, 24, 40]))
    coef_bits = min(16, acc_bits)
    cm = 2 ** (coef_bits - 1) - 1
    sm = 2 ** (state_bits - 1) - 1
    coef = rng.integers(-cm, cm + 1, (degree + 1, n))
    if rng.random() < 0.5 and degree >= 1:  # near-LIF: theta_1 ~ 0.9 on a 15-bit grid
        coef[1] = rng.integers(2**14, 2**15 - 1, n)
    coef[rng.random(coef.shape) < 0.2] = 0
    return fx.FxPoly(
        shape=shape,
        coef=coef.reshape(degree + 1, *shape),
        shifts=tuple(int(s) for s in rng.integers(0, 24, degree)),
        vth=rng.integers(0, min(sm, 5000) + 1, n).reshape(shape),
        v_reset=rng.integers(-100, 101, n).reshape(shape),
        reset=str(rng.choice(["value", "subtract"])),  # type: ignore[arg-type]
        in_shift=int(rng.integers(0, 9)),
        syn_decay=None if rng.random() < 0.5 else rng.integers(0, 4097, n).reshape(shape),
        rounding=str(rng.choice(["nearest", "floor", "trunc"])),  # type: ignore[arg-type]
        overflow=str(rng.choice(["saturate", "wrap"])),  # type: ignore[arg-type]
        state_bits=state_bits,
        acc_bits=acc_bits,
        coef_bits=coef_bits,
        v_init=rng.integers(-sm, sm + 1, n).reshape(shape) * (rng.random() < 0.3),
    )


def adaptive(rng: np.random.Generator, shape: tuple[int, ...], *, small: bool = True) -> Any:
    """A random ``FxAdaptivePoly``: a random polynomial neuron plus a threshold register (decay,
    jump of either sign, sometimes a non-resting initial threshold)."""
    from lnm_deploy.adaptive import FxAdaptivePoly

    p = poly(rng, shape, small=small)
    n = int(np.prod(shape))
    sm = 2 ** (p.state_bits - 1) - 1
    step = rng.integers(0, min(sm, 3000), n) * (1 if rng.random() < 0.8 else -1)
    init = None if rng.random() < 0.7 else rng.integers(-sm, sm + 1, n).reshape(shape)
    fields = {f.name: getattr(p, f.name) for f in dataclasses.fields(fx.FxPoly)}
    return FxAdaptivePoly(**fields, theta_decay=rng.choice([0, 1, 40, 400, 4096], n).reshape(shape),
                          theta_step=step.reshape(shape), theta_init=init)


def atrlif(rng: np.random.Generator, shape: tuple[int, ...], *, edges: bool = True) -> Any:
    """A random ``FxATRLIF`` (Lava's ATRLIF): decays at 0 and 4095, thresholds and jumps over
    their 12 bits, sometimes states at the wrap and saturation limits."""
    from lnm_deploy.adaptive import FxATRLIF

    n = int(np.prod(shape))
    inits: dict[str, Any] = {}
    if edges and rng.random() < 0.4:
        inits = {"i_init": rng.choice([H23, -H23 + 1, H23 - 5, 0, 1000], n).reshape(shape),
                 "v_init": rng.choice([H23 - 1, -H23 + 1, 0, -5000], n).reshape(shape),
                 "theta_init": rng.integers(0, 2**20, n).reshape(shape),
                 "r_init": rng.choice([0, 2**24, -(2**20), 77], n).reshape(shape)}
    return FxATRLIF(
        shape=shape,
        di=pick(rng, [0, 1, 4094, 4095], 0, 4095),
        dv=pick(rng, [0, 1, 4095], 0, 4095),
        dtheta=pick(rng, [0, 1, 4095], 0, 4095),
        dr=pick(rng, [0, 1, 4095], 0, 4095),
        theta_0=pick(rng, [0, 1, 4095], 0, 2000, 0.3),
        theta_step=pick(rng, [0, 4095], 0, 2000, 0.3),
        bias_mant=rng.integers(-4096, 4096, n).reshape(shape) * (rng.random() < 0.6),
        bias_exp=rng.integers(0, 8, n).reshape(shape),
        **inits,
    )


def chain(nodes: list[tuple[str, fx.FxNode]], input_shape: tuple[int, ...],
          recurrent: dict[str, fx.FxDense] | None = None) -> fx.FxGraph:
    """input -> nodes -> output, plus self-recurrent Dense loops ``layer -> rec -> layer``."""
    g_nodes: dict[str, fx.FxNode] = {"input": fx.FxInput(shape=input_shape)}
    edges: list[tuple[str, str]] = []
    prev = "input"
    for name, node in nodes:
        g_nodes[name] = node
        edges.append((prev, name))
        prev = name
    g_nodes["output"] = fx.FxOutput()
    edges.append((prev, "output"))
    for layer, syn in (recurrent or {}).items():
        g_nodes[f"{layer}_rec"] = syn
        edges += [(layer, f"{layer}_rec"), (f"{layer}_rec", layer)]
    return fx.FxGraph(nodes=g_nodes, edges=edges)


def random_dense_net(rng: np.random.Generator, *, neurons: str = "any", recurrent: bool = True,
                     wild: bool = True, max_width: int = 10, max_layers: int = 3) -> fx.FxGraph:
    n_in = int(rng.integers(1, max_width + 1))
    layers: list[tuple[str, fx.FxNode]] = []
    rec: dict[str, fx.FxDense] = {}
    prev = n_in
    for i in range(int(rng.integers(1, max_layers + 1))):
        n = int(rng.integers(1, max_width + 1))
        layers.append((f"syn{i}", dense(rng, n, prev, wild=wild)))
        use_poly = neurons == "poly" or (neurons == "any" and rng.random() < 0.5)
        layers.append((f"n{i}", poly(rng, (n,)) if use_poly else lif(rng, (n,))))
        if recurrent and rng.random() < 0.4:
            rec[f"n{i}"] = dense(rng, n, n, wild=wild)
        prev = n
    return chain(layers, (n_in,), rec)


def random_conv_net(rng: np.random.Generator, *, neurons: str = "any", pool: bool = True) -> fx.FxGraph:
    c_in = int(rng.integers(1, 3))
    h, w = int(rng.integers(3, 7)), int(rng.integers(3, 7))
    c_out = int(rng.integers(1, 4))
    groups = 1
    if c_in == 2 and c_out % 2 == 0 and rng.random() < 0.5:
        groups = 2
    kh, kw = int(rng.integers(1, min(3, h) + 1)), int(rng.integers(1, min(3, w) + 1))
    conv = fx.FxConv2d(
        weight=rng.integers(-256, 256, (c_out, c_in // groups, kh, kw)),
        stride=(int(rng.integers(1, 3)), int(rng.integers(1, 3))),
        padding=(int(rng.integers(0, 2)), int(rng.integers(0, 2))),
        groups=groups,
    )
    layers: list[tuple[str, fx.FxNode]] = [("conv", conv)]
    shape = conv.output_shape("conv", (c_in, h, w))

    def neuron(shape: tuple[int, ...]) -> fx.FxNode:
        use_poly = neurons == "poly" or (neurons == "any" and rng.random() < 0.5)
        return poly(rng, shape) if use_poly else lif(rng, shape, edges=False)

    layers.append(("n0", neuron(shape)))
    if pool and min(shape[1:]) >= 2 and rng.random() < 0.6:
        # sum pooling: a depthwise convolution with unit weights (what the quantizer produces)
        sp = fx.FxConv2d(weight=np.ones((shape[0], 1, 2, 2), dtype=np.int64), stride=(int(rng.integers(1, 3)),) * 2,
                      groups=shape[0])
        shape = sp.output_shape("pool", shape)
        layers += [("pool", sp), ("n1", neuron(shape))]
    flat = int(np.prod(shape))
    n = int(rng.integers(1, 6))
    layers += [("flat", fx.FxFlatten()), ("fc", dense(rng, n, flat, wild=False, sign_modes=False)),
               ("n_out", neuron((n,)))]
    return chain(layers, (c_in, h, w))


def spikes(rng: np.random.Generator, batch: int, steps: int, shape: tuple[int, ...]) -> np.ndarray:
    p = float(rng.choice([0.1, 0.3, 0.7]))
    return (rng.random((batch, steps, *shape)) < p).astype(np.uint8)
