"""A plain-Python big-integer oracle of the fixed-point contract, written from docs/fixed-point.md.

It uses Python ints and lists only (no numpy arithmetic), one sample, one neuron at a time,
following the numbered steps of the contract, and reads nothing of the package but the nodes'
parameters and the graph's schedule (topology). Each kind's oracle sits in a table keyed by the
node's ``kind`` (``SYNAPSES``, ``NEURONS``); a test adds the oracle of its own primitive with
``register_oracle`` (and removes it with ``unregister_oracle``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lnm_deploy.fixedpoint import FxConv2d, FxDense, FxGraph, FxLIF, FxPoly

# ------------------------------------------------------------------------ oracle: section 1


def o_wrap(x: int, n: int) -> int:
    return ((x + 2 ** (n - 1)) % 2**n) - 2 ** (n - 1)


def o_sat(x: int, n: int) -> int:
    m = 2 ** (n - 1) - 1
    return min(max(x, -m), m)


def o_ovf(x: int, n: int, mode: str) -> int:
    return o_sat(x, n) if mode == "saturate" else o_wrap(x, n)


def o_floor_div(x: int, s: int) -> int:
    return x // 2**s  # Python // is floor division


def o_rnd(x: int, s: int, mode: str) -> int:
    if s == 0:
        return x
    if mode == "floor":
        return o_floor_div(x, s)
    if mode == "trunc":
        return -o_floor_div(-x, s) if x < 0 else o_floor_div(x, s)
    assert mode == "nearest"
    return o_floor_div(x + 2 ** (s - 1), s)


def o_shexp(x: int, e: int) -> int:
    return x * 2**e if e >= 0 else o_floor_div(x, -e)


def o_corr24(p: int) -> int:
    if p > 2**23:
        return p - 2**24
    if p <= -(2**23):
        return p + 2**24
    return p


# ---------------------------------------------------------------------- oracle: section 3


def o_dense_weights(node: FxDense) -> list[list[int]]:
    n = node.num_weight_bits
    k = 8 - n + (1 if node.sign_mode == "mixed" else 0)
    out = []
    for row in node.weight.tolist():
        r = []
        for w in row:
            if node.sign_mode == "mixed":
                r.append(o_floor_div(min(max(w, -256), 255), k) * 2**k)
            elif node.sign_mode == "excitatory":
                r.append(o_floor_div(min(max(w, 0), 255), k) * 2**k)
            else:
                r.append(-(o_floor_div(min(max(-w, 0), 255), k) * 2**k))
        out.append(r)
    return out


def o_dense(node: FxDense, w: list[list[int]], s: list[int]) -> list[int]:
    return [o_wrap(o_shexp(sum(wi * si for wi, si in zip(row, s, strict=True)), node.weight_exp), node.out_bits)
            for row in w]


def o_conv(node: FxConv2d, s: list[int], in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[int]:
    cin, hin, win = in_shape
    cout, hout, wout = out_shape
    w = node.weight.tolist()
    cg = cin // node.groups
    og = cout // node.groups
    kh, kw = len(w[0][0]), len(w[0][0][0])
    out = []
    for o in range(cout):
        g = o // og
        for y in range(hout):
            for x in range(wout):
                acc = 0
                for c in range(cg):
                    for i in range(kh):
                        for j in range(kw):
                            yy = y * node.stride[0] - node.padding[0] + i * node.dilation[0]
                            xx = x * node.stride[1] - node.padding[1] + j * node.dilation[1]
                            if 0 <= yy < hin and 0 <= xx < win:
                                acc += w[o][c][i][j] * s[((g * cg + c) * hin + yy) * win + xx]
                out.append(o_wrap(o_shexp(acc, node.weight_exp), node.out_bits))
    return out


# ---------------------------------------------------------------------- oracle: sections 4, 5


class OLIF:
    def __init__(self, node: FxLIF) -> None:
        self.n = node
        self.u = node.u_init.reshape(-1).tolist()
        self.v = node.v_init.reshape(-1).tolist()
        self.bias = [o_shexp(m, e) for m, e in zip(node.bias_mant.reshape(-1).tolist(),
                                                   node.bias_exp.reshape(-1).tolist(), strict=True)]

    def step(self, a: list[int]) -> list[int]:
        n = self.n
        one = 2**n.decay_bits
        s_out = []
        for i, ai in enumerate(a):
            ud = o_rnd(self.u[i] * (one - n.du - 1), n.decay_bits, "trunc")  # 1
            x = o_wrap(ai * 2**n.act_shift, 32)  # 2
            self.u[i] = o_corr24(o_wrap(ud + x, 32))  # 3
            vd = o_rnd(self.v[i] * (one - n.dv), n.decay_bits, "trunc")  # 4
            vp = o_sat(o_wrap(vd + self.u[i] + self.bias[i], 32), 24)  # 5
            s = 1 if vp > n.vth * 2**n.vth_shift else 0  # 6
            self.v[i] = 0 if s else vp  # 7
            s_out.append(s)
        return s_out

    def states(self) -> dict[str, list[int]]:
        return {"u": list(self.u), "v": list(self.v)}


class OPoly:
    def __init__(self, node: FxPoly) -> None:
        self.n = node
        self.v = node.v_init.reshape(-1).tolist()
        self.c = node.c_init.reshape(-1).tolist()
        self.coef = [row.reshape(-1).tolist() for row in node.coef]
        self.vth = node.vth.reshape(-1).tolist()
        self.v_reset = node.v_reset.reshape(-1).tolist()
        self.dc = None if node.syn_decay is None else node.syn_decay.reshape(-1).tolist()
        # the current-bias register (section 5, step 1): zeros without one
        self.cb = [0] * len(self.v) if getattr(node, "c_bias", None) is None else node.c_bias.reshape(-1).tolist()
        # section 5.2 (absent on nodes written before it: the binary neuron)
        self.ge = getattr(node, "threshold", ">") == ">="
        self.cap = int(getattr(node, "max_payload", 1))
        floor = getattr(node, "v_floor", None)
        self.floor = None if floor is None else np.broadcast_to(floor, node.shape).reshape(-1).tolist()

    def step(self, a: list[int]) -> list[int]:
        n = self.n
        S, R, rnd, ovf = n.state_bits, n.acc_bits, n.rounding, n.overflow
        s_out = []
        for i, ai in enumerate(a):
            x = ai * 2**n.in_shift + self.cb[i]  # 1
            if self.dc is not None:  # 2
                self.c[i] = o_ovf(o_rnd(self.c[i] * (2**n.decay_bits - self.dc[i]), n.decay_bits, rnd) + x, S, ovf)
            else:
                self.c[i] = o_ovf(x, S, ovf)
            d = len(self.coef) - 1  # 3
            h = self.coef[d][i]
            for k in range(d - 1, -1, -1):
                h = o_ovf(o_rnd(h * self.v[i], n.shifts[k], rnd) + self.coef[k][i], R, ovf)
            vp = o_ovf(h + self.c[i], S, ovf)  # 4
            th = self.vth[i]
            fired = vp >= th if self.ge else vp > th  # 5 (5.2: the spike test)
            s = 0
            if fired:  # 5.2: graded count min(floor(v' / vth), P), at least 1
                s = 1 if self.cap == 1 else max(1, min(vp // th, self.cap))
            if fired:  # 6 (5.2: subtract the count times vth)
                self.v[i] = self.v_reset[i] if n.reset == "value" else o_ovf(vp - s * th, S, ovf)
            else:
                self.v[i] = vp
            if self.floor is not None:  # 7 (5.2: the membrane floor)
                self.v[i] = max(self.v[i], self.floor[i])
            s_out.append(s)
        return s_out

    def states(self) -> dict[str, list[int]]:
        out = {"v": list(self.v)}
        if self.dc is not None:
            out["c"] = list(self.c)
        return out


class OAdaptive(OPoly):
    """The adaptive-threshold polynomial neuron (docs/adaptive.md, integer step): steps 1-4 of the
    polynomial neuron, then the spike test against the threshold register, the reset and the
    register's update, from the document (Python ints)."""

    def __init__(self, node: Any) -> None:
        super().__init__(node)
        self.theta = node.theta_init.reshape(-1).tolist()
        self.dt = node.theta_decay.reshape(-1).tolist()
        self.jump = node.theta_step.reshape(-1).tolist()

    def step(self, a: list[int]) -> list[int]:
        n = self.n
        S, R, D, rnd, ovf = n.state_bits, n.acc_bits, n.decay_bits, n.rounding, n.overflow
        s_out = []
        for i, ai in enumerate(a):
            x = ai * 2**n.in_shift + self.cb[i]
            if self.dc is not None:
                self.c[i] = o_ovf(o_rnd(self.c[i] * (2**D - self.dc[i]), D, rnd) + x, S, ovf)
            else:
                self.c[i] = o_ovf(x, S, ovf)
            d = len(self.coef) - 1
            h = self.coef[d][i]
            for k in range(d - 1, -1, -1):
                h = o_ovf(o_rnd(h * self.v[i], n.shifts[k], rnd) + self.coef[k][i], R, ovf)
            vp = o_ovf(h + self.c[i], S, ovf)
            th = self.theta[i]
            s = 1 if vp > th else 0
            if s:
                self.v[i] = self.v_reset[i] if n.reset == "value" else o_ovf(vp - th, S, ovf)
            else:
                self.v[i] = vp
            relaxed = o_rnd((th - self.vth[i]) * (2**D - self.dt[i]), D, rnd)
            self.theta[i] = o_ovf(self.vth[i] + relaxed + self.jump[i] * s, S, ovf)
            s_out.append(s)
        return s_out

    def states(self) -> dict[str, list[int]]:
        return {**super().states(), "theta": list(self.theta)}


class OATRLIF:
    """Lava's ATRLIF (docs/fixed-point.md, "ATRLIF"), from the document (Python ints)."""

    def __init__(self, node: Any) -> None:
        self.n = node
        self.i = node.i_init.reshape(-1).tolist()
        self.v = node.v_init.reshape(-1).tolist()
        self.theta = node.theta_init.reshape(-1).tolist()
        self.r = node.r_init.reshape(-1).tolist()
        self.bias = [o_shexp(m, e) for m, e in zip(node.bias_mant.reshape(-1).tolist(),
                                                   node.bias_exp.reshape(-1).tolist(), strict=True)]

    def step(self, a: list[int]) -> list[int]:
        n = self.n
        one, D = 2**n.decay_bits, n.decay_bits
        th0, tstep = n.theta_0 * 2**n.theta_shift, n.theta_step * 2**n.theta_shift
        s_out = []
        for k, ak in enumerate(a):
            x = o_wrap(ak * 2**n.act_shift, 32)
            self.i[k] = o_corr24(o_wrap(o_rnd(self.i[k] * (one - n.di - 1), D, "trunc") + x, 32))
            self.v[k] = o_sat(o_wrap(o_rnd(self.v[k] * (one - n.dv), D, "trunc") + self.i[k] + self.bias[k], 32), 24)
            dev = o_wrap(self.theta[k] - th0, 32)
            self.theta[k] = o_wrap(o_rnd(dev * (one - n.dtheta), D, "trunc") + th0, 32)
            self.r[k] = o_wrap(o_rnd(self.r[k] * (one - n.dr), D, "trunc"), 32)
            s = 1 if o_wrap(self.v[k] - self.r[k], 32) >= self.theta[k] else 0
            if s:
                self.r[k] = o_wrap(self.r[k] + o_wrap(2 * self.theta[k], 32), 32)
                self.theta[k] = o_wrap(self.theta[k] + tstep, 32)
            s_out.append(s)
        return s_out

    def states(self) -> dict[str, list[int]]:
        return {"i": list(self.i), "v": list(self.v), "theta": list(self.theta), "r": list(self.r)}


class OLIReadout(OLIF):
    """The non-spiking readout (docs/fixed-point.md section 5a, ``li_readout``): steps 1-5 of the
    stock LIF (section 4.2) with widths N, D and act_shift from the node, no spike test, no reset;
    its spikes are all 0 and its output is ``v`` (Python ints). The states and bias as ``OLIF``'s."""

    def step(self, a: list[int]) -> list[int]:
        n = self.n
        one, N = 2**n.decay_bits, n.state_bits
        half = 2 ** (N - 1)
        for i, ai in enumerate(a):
            ud = o_rnd(self.u[i] * (one - n.du - 1), n.decay_bits, "trunc")  # 1
            x = o_wrap(ai * 2**n.act_shift, 32)  # 2
            p = o_wrap(ud + x, 32)  # 3: corr_N, one correction
            self.u[i] = p - 2 * half if p > half else (p + 2 * half if p <= -half else p)
            vd = o_rnd(self.v[i] * (one - n.dv), n.decay_bits, "trunc")  # 4
            self.v[i] = o_sat(o_wrap(vd + self.u[i] + self.bias[i], 32), N)  # 5
        return [0] * len(a)

    def states(self) -> dict[str, list[int]]:
        return {"u": list(self.u), "v": list(self.v)}


#: The oracle of each synapse or reshape kind: ``(node, spikes, in_shape, out_shape) -> values``
#: on flat lists of one sample and one step.
SYNAPSES: dict[str, Callable[..., list[int]]] = {
    "dense": lambda node, s, i, o: o_dense(node, o_dense_weights(node), s),
    "conv2d": o_conv,
    "flatten": lambda node, s, i, o: s,
}
#: The oracle of each neuron kind: a class built from the node, with ``step(a) -> spikes`` and
#: ``states() -> {name: values}`` on flat lists.
NEURONS: dict[str, Callable[[Any], Any]] = {"lif": OLIF, "poly": OPoly, "adaptive_poly": OAdaptive,
                                            "atrlif": OATRLIF,
                                            "li_readout": OLIReadout}


def register_oracle(kind: str, impl: Callable[..., Any], *, neuron: bool) -> None:
    """Add the oracle of a new primitive kind (a test's own toy primitive, for example)."""
    table: dict[str, Any] = NEURONS if neuron else SYNAPSES
    if kind in table:
        raise ValueError(f"the oracle already knows kind {kind!r}")
    table[kind] = impl


def unregister_oracle(kind: str) -> None:
    """Remove the oracle of ``kind`` (a test's primitive, when the test is done); the package's
    own kinds cannot be removed (``ValueError``)."""
    if kind in _BUILTIN:
        raise ValueError(f"the oracle of {kind!r} is part of the suite")
    NEURONS.pop(kind, None)
    SYNAPSES.pop(kind, None)


_BUILTIN = frozenset({*SYNAPSES, *NEURONS})


def _table(table: dict[str, Any], kind: str) -> Any:
    if kind not in table:
        raise KeyError(f"the oracle has no step for kind {kind!r} (known: {sorted(table)}); "
                       "register one with fx_oracle.register_oracle")
    return table[kind]


def oracle(graph: FxGraph, x: np.ndarray) -> tuple[dict[str, list], dict[str, dict[str, list]]]:
    """Spikes and states per layer as nested lists [sample][step][flat neuron]."""
    sched = graph.schedule()
    xl = x.reshape(x.shape[0], x.shape[1], -1).tolist()
    neurons = [n for n in sched.order if graph.nodes[n].role == "neuron"]
    spk: dict[str, list] = {n: [] for n in neurons}
    sts: dict[str, dict[str, list]] = {}
    for b in range(len(xl)):
        runs = {n: _table(NEURONS, graph.nodes[n].kind)(graph.nodes[n]) for n in neurons}
        for n in neurons:
            spk[n].append([])
            for k in runs[n].states():
                sts.setdefault(n, {}).setdefault(k, []).append([])
        prev: dict[str, list[int]] = {}
        for t in range(len(xl[b])):
            cur: dict[str, list[int]] = {}
            for n in sched.order:
                node = graph.nodes[n]
                ins = sched.inputs[n]
                if node.role == "input":
                    cur[n] = xl[b][t]
                elif node.role == "output":
                    continue
                elif n not in runs:
                    src = ins[0][0]
                    cur[n] = _table(SYNAPSES, node.kind)(node, cur[src], sched.shapes[src], sched.shapes[n])
                else:
                    size = int(np.prod(sched.shapes[n]))
                    total = [0] * size
                    for src, delayed in ins:  # 4.1
                        vals = (prev.get(src, [0] * size)) if delayed else cur[src]
                        total = [p + q for p, q in zip(total, vals, strict=True)]
                    cur[n] = runs[n].step([o_wrap(v, 32) for v in total])
                    spk[n][b].append(cur[n])
                    for k, v in runs[n].states().items():
                        sts[n][k][b].append(v)
            prev = cur
    return spk, sts


def as_arrays(graph: FxGraph, spk: dict[str, list], sts: dict[str, dict[str, list]],
              batch: int, steps: int) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    shapes = graph.schedule().shapes
    a = {n: np.array(v, dtype=np.int64).reshape(batch, steps, *shapes[n]) for n, v in spk.items()}
    s = {n: {k: np.array(v, dtype=np.int64).reshape(batch, steps, *shapes[n]) for k, v in d.items()}
         for n, d in sts.items()}
    return a, s
