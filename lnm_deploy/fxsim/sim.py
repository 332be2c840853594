"""fxsim: the bit-accurate simulator of an ``FxGraph`` (contract: ``docs/fixed-point.md``).

Time is cut into chunks; within a chunk each node runs over all of the chunk's timesteps at once,
in schedule order, and neuron states carry over to the next chunk. Two engines:

* ``layer`` (feed-forward graphs): chunks of about ``CHUNK_ROWS`` rows (timesteps * samples). A
  synapse's input for the whole chunk is known, so its products are one BLAS call (or one kernel
  call) on (chunk * batch, fan_in); the per-chunk buffers are allocated once per run and reused.
* ``step`` (any graph, needed for recurrence): chunks of one timestep, like the float executor;
  a back edge delivers its source's value of the previous step.

Compiled kernels (``kernels.py``, numba, when installed) replace the Dense and Conv2d products on
sparse spikes, the LIF and the polynomial neuron with integer loops; without them everything is
numpy.

Exactness is never traded for speed. On the numpy path, binary spikes times integer weights are
summed in float32 only when ``max_o sum_i |W[o, i]| < 2**24`` (every partial sum is then an
exactly representable integer), in float64 below ``2**53``, else in int64. The LIF update runs
in float64 only when a static bound proves every intermediate is an integer below ``2**53`` and
that none of Lava's int32 wraps can trigger; the saturation and wrap steps are skipped only where
a static bound proves they cannot change a value. Everything else is int64 and follows the
contract literally. The oracle and Lava differential tests (``tests/test_fxsim_*.py``) guard
every configuration.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from lnm_deploy.errors import DependencyError, UnsupportedError, UserInputError
from lnm_deploy.execute import RunResult
from lnm_deploy.fixedpoint.arith import F32_EXACT, F64_EXACT, exact_float, shift_exp, wrap
from lnm_deploy.fixedpoint.contract import (
    LIFParams,
    PolyParams,
    SynapseBounds,
    lif_bounds,
    lif_input,
    lif_update,
    neuron_input_bound,
    poly_input,
    poly_update,
)
from lnm_deploy.fixedpoint.graph import FxGraph
from lnm_deploy.fixedpoint.nodes import (
    FxConv2d,
    FxDense,
    FxFlatten,
    FxLIF,
    FxNeuron,
    FxNode,
    FxPoly,
)
from lnm_deploy.fixedpoint.primitives import (
    input_payloads,
    lookup,
    output_state,
    primitive_of,
    primitives,
    synapse_bounds,
)
from lnm_deploy.ir import Schedule

Array = np.ndarray
PLAN_KEEP_BYTES = 64 << 20  # the most a kept plan's copies of node attributes take (``_Plan``)
POOL_KEEP_BYTES = 256 << 20  # the most a thread keeps of its last runs' intermediate arrays (``_Pool``)
CHUNK_ROWS = 1024  # (timesteps * batch) rows per chunk of the layer engine
# Above this fraction of inputs spiking, a BLAS product beats the event-driven Dense kernel (below
# it BLAS is not faster, and its spinning threads slow the parallel kernels that follow).
EVENTS_MAX_DENSITY = 0.5
# A Conv2d's event kernel runs where its estimated operations, times this, are fewer than the dense
# product's (``_Conv._events_pay``): on this project's 2-core machine numpy's float32 convolution
# does about 1.5 times more multiply-adds per second than the kernel does weight additions
# (measured per layer shape of the benchmarks' networks, densities 0.1 to 0.8).
CONV_EVENTS_COST = 1.5


def _spike_count(s: Array) -> float:
    """The number of spikes in ``s`` (rows, ...), for a cost estimate (which never changes a
    result): counted in every 8th row where there are 64 rows or more (a run's chunk of the
    16-sample ResNet counted its spikes in 0.7 ms of 28)."""
    rows = s.shape[0]
    if rows < 64:
        return float(np.count_nonzero(s))
    return float(np.count_nonzero(s[::8])) * rows / len(range(0, rows, 8))


def _scratch(buf: Array | None, shape: tuple[int, ...], dtype: Any) -> Array:
    """``buf`` if it can hold ``shape`` (leading rows may be fewer), else a new array."""
    if buf is None or buf.dtype != dtype or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
        return np.empty(shape, dtype=dtype)
    return buf


@dataclass
class _Val:
    """Exact integers in ``a`` (float32, float64, int32 or int64) with ``|a| <= bound`` proven
    statically (int32 only below ``2**31``)."""

    a: Array
    bound: int

    def as_int(self) -> Array:
        return self.a if self.a.dtype == np.int64 else self.a.astype(np.int64)


def _finish_synapse(acc: _Val, weight_exp: int, out_bits: int, sb: SynapseBounds) -> _Val:
    """``wrap_{out_bits}(shift_exp(acc, weight_exp))``, skipping the wrap where the synapse's
    static bounds ``sb`` (``acc.bound == sb.acc``) prove it the identity."""
    a, bound = acc.a, acc.bound
    if weight_exp != 0:
        if a.dtype.kind == "f" and (bound << max(weight_exp, 0)) < (F32_EXACT if a.dtype == np.float32 else F64_EXACT):
            a = a * np.asarray(2.0**weight_exp, dtype=a.dtype)
            if weight_exp < 0:
                a = np.floor(a)
        else:
            a = shift_exp(acc.as_int(), weight_exp)
    if sb.wraps:
        a = wrap(a if a.dtype == np.int64 else a.astype(np.int64), out_bits)
    return _Val(a, sb.out)


class _Synapse:
    bound: int  # static bound on the accumulator (before the exponent)
    bounds: SynapseBounds

    def __call__(self, s: Array, reuse: bool = False) -> _Val:
        """Products for spikes ``s`` (N, *in_shape) of 0/1. ``reuse``: the result may live in a
        buffer that the next call overwrites (its consumers run before then: same-step ones later
        in the chunk, and a back edge's target earlier in the next step's schedule)."""
        raise NotImplementedError

    def add_into(self, s: Array, into: _Val) -> _Val | None:
        """``into`` plus this synapse's products for spikes ``s``, computed in ``into``'s buffer
        (which it overwrites), where that is exact and cheaper than a separate sum; else None
        (nothing written). ``into``: another synapse's output for the same rows, int32."""
        return None


class _Dense(_Synapse):
    def __init__(self, node: FxDense, kern: Any = None, payload: int = 1) -> None:
        self.node = node
        self.bounds, self.wt, self.w32 = _static(node, f"dense {payload} {kern is not None}",
                                                 lambda: self._weights(node, kern is not None, payload))
        self.bound = self.bounds.acc
        self.dtype: Any = self.wt.dtype.type
        # Event-driven accumulation in int32 is exact while every partial sum stays below 2**31.
        self.kern = kern if self.w32 is not None else None
        self.accel: Any = None if self.kern is None else getattr(kern, ACCELERATIONS["dense"])
        self._in: Array | None = None
        self._out: Array | None = None
        self._out32: Array | None = None

    @staticmethod
    def _weights(node: FxDense, events: bool, payload: int) -> tuple[SynapseBounds, Array, Array | None]:
        """The bounds, the transposed weight in the product's exact dtype and, for the event kernel
        (``events``, where every partial sum stays below ``2**31``: exact in int32), as int32."""
        w = node.effective_weight()
        bounds = synapse_bounds(node, payload=payload)
        dt = exact_float(bounds.acc)
        wt: Array = np.ascontiguousarray(w.T.astype(dt if dt is not None else np.int64))
        return bounds, wt, np.ascontiguousarray(w.T.astype(np.int32)) if events and bounds.acc < 2**31 else None

    def __call__(self, s: Array, reuse: bool = False) -> _Val:
        x = s.reshape(s.shape[0], -1)
        rows = x.shape[0]
        if self.kern is not None and _spike_count(x) <= EVENTS_MAX_DENSITY * x.size:
            x = np.ascontiguousarray(x)
            if reuse:
                self._out32 = _scratch(self._out32, (rows, self.wt.shape[1]), np.int32)
                acc = self._out32[:rows]
            else:
                acc = np.empty((rows, self.wt.shape[1]), np.int32)
            with self.kern.LOCK:
                self.accel(x, self.w32, acc)
        elif reuse:
            # Fresh multi-megabyte arrays cost a page fault per 4 KiB page on first touch, which
            # is as slow as the product itself; chunks reuse two buffers.
            self._in = _scratch(self._in, x.shape, self.dtype)
            self._out = _scratch(self._out, (rows, self.wt.shape[1]), self.dtype)
            xin, acc = self._in[:rows], self._out[:rows]
            np.copyto(xin, x)
            np.matmul(xin, self.wt, out=acc)
        else:
            acc = x.astype(self.dtype, copy=False) @ self.wt
        return _finish_synapse(_Val(acc, self.bound), self.node.weight_exp, self.node.out_bits, self.bounds)


class _Conv(_Synapse):
    def __init__(self, node: FxConv2d, kern: Any = None, payload: int = 1) -> None:
        self.node = node
        w = node.weight
        self.bounds = synapse_bounds(node, payload=payload)
        self.bound = self.bounds.acc
        dt = exact_float(self.bound)
        self.dtype: Any = dt if dt is not None else np.int64
        self.w: Array = w.astype(self.dtype)
        # Event-driven accumulation in int32 is exact while every partial sum stays below 2**31.
        self.kern = kern if self.bound < 2**31 else None
        self.w_events: Array | None = None
        if self.kern is not None:
            cout, cin_g, kh, kw = w.shape
            g = node.groups
            self.w_events = np.ascontiguousarray(
                w.reshape(g, cout // g, cin_g, kh, kw).transpose(0, 2, 3, 4, 1).reshape(g * cin_g, kh, kw, cout // g)
                .astype(np.int32))
        self._out32: Array | None = None

    def _events_pay(self, s: Array, out_shape: tuple[int, ...]) -> bool:
        """Whether the event kernel beats the dense product on ``s`` (a cost estimate measured on
        the benchmarks' networks; it never changes a result): every spike adds ``C_out/groups``
        weights per tap it reaches (about ``kh kw / (sh sw)``), with a fixed cost per tap, against
        a dense product of every output with every input of its window, which numpy does about
        ``CONV_EVENTS_COST`` times faster per operation. Depthwise (pooling) always: numpy's
        product there runs one group at a time."""
        cout, cin_g, kh, kw = self.w.shape
        cout_g = cout // self.node.groups
        if cout_g == 1:
            return True
        taps = kh * kw / (self.node.stride[0] * self.node.stride[1])
        events = _spike_count(s) * taps * (cout_g + 8)
        dense = s.shape[0] * cout * out_shape[1] * out_shape[2] * cin_g * kh * kw
        return CONV_EVENTS_COST * events <= dense

    def add_into(self, s: Array, into: _Val) -> _Val | None:
        n = self.node
        out_shape = n.output_shape("", s.shape[1:])
        shape = (s.shape[0], *out_shape)
        a = into.a
        if (self.kern is None or n.weight_exp != 0 or self.bounds.wraps or into.bound + self.bound >= 2**31
                or a.dtype != np.int32 or a.size != int(np.prod(shape)) or not a.flags.c_contiguous
                or not self._events_pay(s, out_shape)):
            return None
        assert self.w_events is not None
        s = np.ascontiguousarray(s)
        with self.kern.LOCK:  # every partial sum is bounded by into.bound + self.bound < 2**31
            getattr(self.kern, ACCELERATIONS["conv2d"])(
                s.view(np.uint8) if s.dtype == np.bool_ else s, self.w_events, a.reshape(shape), *n.stride,
                *n.padding, *n.dilation, self.w.shape[1], True)
        return _Val(a, into.bound + self.bound)

    def __call__(self, s: Array, reuse: bool = False) -> _Val:
        n = self.node
        out_shape = n.output_shape("", s.shape[1:])
        if self.kern is not None and self._events_pay(s, out_shape):
            assert self.w_events is not None
            shape = (s.shape[0], *out_shape)
            if reuse:
                self._out32 = _scratch(self._out32, shape, np.int32)
                acc = self._out32[: s.shape[0]]
            else:
                acc = np.empty(shape, np.int32)
            s = np.ascontiguousarray(s)
            with self.kern.LOCK:  # uint8: numba's loops on bool arrays do not vectorise
                getattr(self.kern, ACCELERATIONS["conv2d"])(
                    s.view(np.uint8) if s.dtype == np.bool_ else s, self.w_events, acc, *n.stride, *n.padding,
                    *n.dilation, self.w.shape[1])
            return _finish_synapse(_Val(acc, self.bound), n.weight_exp, n.out_bits, self.bounds)
        x: Array = s.astype(self.dtype, copy=False)
        ph, pw = n.padding
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        cout, cin_g, kh, kw = self.w.shape
        dh, dw = n.dilation
        win = sliding_window_view(x, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))  # type: ignore[call-overload]
        win = win[:, :, :: n.stride[0], :: n.stride[1], ::dh, ::dw]
        outs = []
        cout_g = cout // n.groups
        for g in range(n.groups):
            xs = win[:, g * cin_g : (g + 1) * cin_g]
            ws = self.w[g * cout_g : (g + 1) * cout_g]
            outs.append(np.einsum("bchwij,ocij->bohw", xs, ws, optimize=True))
        y = outs[0] if n.groups == 1 else np.concatenate(outs, axis=1)
        return _finish_synapse(_Val(np.ascontiguousarray(y), self.bound), n.weight_exp, n.out_bits, self.bounds)


#: fxsim's synapse implementations by primitive kind.
SYNAPSES: dict[str, type[_Synapse]] = {"dense": _Dense, "conv2d": _Conv}


def _make_synapse(name: str, node: FxNode, kern: Any, payload: int = 1) -> _Synapse:
    """The synapse engine of ``node``; ``payload``: the largest input spike value (graded source,
    ``docs/fixed-point.md`` 5.2), which its bounds include. The event kernels read binary spikes
    only: a synapse fed by a graded layer runs the exact product path (no kernel)."""
    cls = lookup(SYNAPSES, primitive_of(node, name).kind, "fxsim's synapse engine", name)
    out: _Synapse = cls(node, kern) if payload == 1 else cls(node, None, payload=payload)
    return out


def _sum_inputs(vals: list[_Val]) -> _Val:
    """The neuron input ``wrap32(sum of synapse outputs)`` (Lava's int32 InPort accumulation)."""
    bound = sum(v.bound for v in vals)
    if len(vals) == 1 and bound < 2**31:
        return vals[0]
    if bound < 2**31 and all(v.a.dtype.kind == "f" for v in vals):
        dt = exact_float(bound) or np.float64
        total: Array = vals[0].a.astype(dt)
        for v in vals[1:]:
            total = total + v.a
        return _Val(total, bound)
    if bound < 2**31:  # every partial sum fits int32 (floats here hold integers below 2**31: exact)
        total = vals[0].a.astype(np.int32)
        for v in vals[1:]:
            if v.a.dtype == np.int32:
                np.add(total, v.a, out=total)
            else:
                np.add(total, v.a.astype(np.int32), out=total)
        return _Val(total, bound)
    total = vals[0].as_int()
    for v in vals[1:]:
        total = total + v.as_int()
    if bound >= 2**31:
        total = wrap(total, 32)
        bound = 2**31
    return _Val(total, bound)


# --------------------------------------------------------------------------------------- neurons


# The kernels' record arrays when not recording. Every array a kernel gets is C-contiguous and
# writable (the records are the result's own (batch, timesteps, neurons) arrays, not time-major
# views), so numba compiles one specialisation per input dtype, not one per layout or flag
# (measured: 18 of ``poly_steps`` in the bounds-checked test's build, 3 now).
_NO_REC = np.zeros((1, 1, 1), dtype=np.int64)


def _kernel_layout(a: Array, out: Array, flat: tuple[int, int, int]) -> tuple[Array, Array, bool]:
    """A neuron kernel's input ``a`` and spikes ``out`` (both (C, B, *shape)) as its 3-d arrays:
    (C, B, N) where ``out`` is C-contiguous, else (B, C, N) and ``bm`` True (batch-major: ``out``
    is the (C, B) view of a C-contiguous (B, C) array, the layer engine's single chunk). ``a`` is
    copied into that layout where it is not in it already; ``out`` is written through, never
    copied."""
    steps, batch, n = flat
    if out.flags.c_contiguous:
        return np.ascontiguousarray(a).reshape(flat), out.reshape(flat), False
    out_bm = out.swapaxes(0, 1)
    assert out_bm.flags.c_contiguous, "a neuron's spikes are time-major or batch-major"
    return np.ascontiguousarray(a.swapaxes(0, 1)).reshape(batch, steps, n), out_bm.reshape(batch, steps, n), True


def _reshaped(a: Array, shape: tuple[int, ...]) -> Array:
    """``a.reshape(shape)`` as a view (the kernels write through it): the record arrays are
    C-contiguous (batch, timesteps, *shape) arrays, whose trailing axes merge without a copy."""
    r = a.reshape(shape)
    if r.size and not np.may_share_memory(r, a):
        raise AssertionError(f"fxsim: a record array of shape {a.shape} cannot be viewed as {shape}")
    return r


def _fits_int32(a: Array | int) -> bool:
    """Whether every value of ``a`` is in int32's range."""
    a = np.asarray(a)
    return a.size == 0 or bool(-(2**31) <= a.min() and a.max() < 2**31)


def _full(a: Array | int, shape: tuple[int, ...], dtype: Any) -> Array:
    """A writable C-contiguous copy of ``a`` broadcast to ``shape`` (in-place ufuncs on strided or
    broadcast states are several times slower)."""
    return np.array(np.broadcast_to(a, shape), dtype=dtype, order="C")


def _per_neuron(a: Array | int, shape: tuple[int, ...]) -> Array:
    """``a`` broadcast to a layer's ``shape``, as the kernels' flat int64 per-neuron array (N,)."""
    return _full(a, shape, np.int64).reshape(-1)


class _Pool:
    """Arrays a run of ``run_fx`` uses only inside itself (spikes in the time-major layout, the
    compiled neuron kernels' states),
    kept per thread from one run to the next: a fresh multi-megabyte array costs the operating
    system's page faults on its first write, every run (measured: a tenth of a ResNet run).
    ``run_fx`` takes the thread's pool for the run (``take``) and hands it back (``give``); a run
    nested in another on the same thread finds it empty and allocates."""

    _local = threading.local()

    def __init__(self, free: list[Array]) -> None:
        self.free, self.used = free, []  # type: list[Array], list[Array]

    @classmethod
    def take(cls) -> _Pool:
        free = getattr(cls._local, "free", None) or []
        cls._local.free = []
        pool = cls(free)
        cls._local.current = pool
        return pool

    def give(self) -> None:
        """Keep this run's arrays, then those left from earlier runs, up to ``POOL_KEEP_BYTES``
        (runs of other shapes would otherwise pile up arrays nothing takes)."""
        keep, total = [], 0
        for a in self.used + self.free:
            if total + a.nbytes <= POOL_KEEP_BYTES:
                keep.append(a)
                total += a.nbytes
        self._local.free = keep
        self._local.current = None

    @classmethod
    def current(cls) -> _Pool | None:
        return getattr(cls._local, "current", None)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Array:
        """An array of ``shape`` and ``dtype`` (C-contiguous, values left over), this run's own."""
        for i, a in enumerate(self.free):
            if a.shape == shape and a.dtype == dtype:
                self.used.append(self.free.pop(i))
                return a
        a = np.empty(shape, dtype=dtype)
        self.used.append(a)
        return a


def _state_buffer(shape: tuple[int, ...]) -> Array:
    """An int64 array of ``shape`` (values left over) from the running ``run_fx``'s pool
    (``_Pool``), for a compiled neuron kernel's states: its first call sets them."""
    pool = _Pool.current()
    return np.empty(shape, np.int64) if pool is None else pool.empty(shape, np.int64)


_OPAQUE = object()  # the key of a value ``_key`` does not compare: equal to nothing


def _key(v: Any, depth: int = 0) -> Any:
    """A comparable copy of a plain value: ``(type, value)`` for None, bools, numbers, strings and
    numpy scalars, recursively for tuples and frozensets of those (exact types, a few levels deep:
    shapes, shifts, edges); ``_OPAQUE`` for anything else. Two values with equal keys are the same
    value of the same types."""
    t = type(v)
    if v is None or t in (bool, int, float, str):
        return t, v
    if isinstance(v, np.generic) and v.dtype.kind in "biuf":
        return t, v.item()
    if t in (tuple, frozenset) and depth < 4:
        keys = [_key(e, depth + 1) for e in v]
        if any(k is _OPAQUE for k in keys):
            return _OPAQUE
        return t, (tuple(keys) if t is tuple else frozenset(keys))
    return _OPAQUE


def _attributes(node: FxNode) -> dict[str, Any] | None:
    """Every attribute of ``node`` but ``metadata`` (provenance, never semantics), or None for a
    node a plan cannot check: a class from outside this package (its semantics may live in other
    state: class attributes, slots) or with slots."""
    cls = type(node)
    if not cls.__module__.startswith("lnm_deploy.") or any("__slots__" in vars(c) for c in cls.__mro__[:-1]):
        return None
    attrs = getattr(node, "__dict__", None)
    return None if attrs is None else {k: v for k, v in attrs.items() if k != "metadata"}


class _NodeCheck:
    """Private copies of one node's attributes: arrays (exact ``np.ndarray``) copied, plain values
    as ``_key``s; ``ok`` False where an attribute is neither (the node cannot be checked)."""

    def __init__(self, node: FxNode) -> None:
        attrs = _attributes(node)
        self.ok = attrs is not None
        attrs = attrs or {}
        self.names = set(attrs)
        self.arrays = [(k, v.copy()) for k, v in attrs.items() if type(v) is np.ndarray]
        self.plain = [(k, _key(v)) for k, v in attrs.items() if type(v) is not np.ndarray]
        self.ok = self.ok and all(key is not _OPAQUE for _, key in self.plain)
        self.nbytes = sum(a.nbytes for _, a in self.arrays)

    def holds(self, node: FxNode) -> bool:
        """Whether ``node``'s attributes still equal the copies."""
        attrs = _attributes(node)
        if not self.ok or attrs is None or attrs.keys() != self.names:
            return False
        for k, a in self.arrays:
            v = attrs[k]
            if type(v) is not np.ndarray or v.dtype != a.dtype or v.shape != a.shape or not np.array_equal(v, a):
                return False
        return all(_key(attrs[k]) == key for k, key in self.plain)


class _Plan:
    """What ``run_fx`` derives from a graph alone, kept from one run of the graph to the next
    (measured: a fifth of a 16-sample ResNet run went into validating the graph, converting its
    weights and spreading its per-neuron parameters, every run): the schedule, the synapses'
    input payloads and each engine's static arrays (``_static``).

    A plan is kept for a graph (an ``FxGraph``, not a subclass) of this package's node classes
    while the graph lives, and used again while the graph's node names, node objects and their
    classes, edges, delays and target are the same and every node attribute (but ``metadata``)
    equals a private copy taken when the plan was made: each run compares them (arrays element
    by element, a few percent of the saving), so a node edited in place, weights included, is
    planned anew. It holds no reference to the graph or its nodes (weak references only). Not
    kept: graphs whose copies exceed ``PLAN_KEEP_BYTES`` (their setup is a smaller part of a
    run), other graph or node classes, attributes of other types (planned every run, as before).
    The static arrays are shared by the runs of all threads and never written."""

    _plans: ClassVar[weakref.WeakKeyDictionary[FxGraph, _Plan]] = weakref.WeakKeyDictionary()
    _lock = threading.Lock()
    _local = threading.local()

    def __init__(self, graph: FxGraph) -> None:
        self.names = list(graph.nodes)
        self.refs = [weakref.ref(node) for node in graph.nodes.values()]
        self.types = [type(node) for node in graph.nodes.values()]
        self.links = self._links(graph)
        self.checks = [_NodeCheck(node) for node in graph.nodes.values()]
        self.index = {id(node): i for i, node in enumerate(graph.nodes.values())}
        self.keep = (type(graph) is FxGraph and self.links is not _OPAQUE and all(c.ok for c in self.checks)
                     and sum(c.nbytes for c in self.checks) <= PLAN_KEEP_BYTES)
        self.sched = graph.schedule()
        self.payloads = input_payloads(graph, self.sched)
        self.static: dict[tuple[int, str], Any] = {}

    @staticmethod
    def _links(graph: FxGraph) -> Any:
        return _key((tuple(tuple(e) for e in graph.edges), graph.delays, graph.target))

    def valid_for(self, graph: FxGraph) -> bool:
        nodes = graph.nodes
        if list(nodes) != self.names:
            return False
        for node, ref, cls in zip(nodes.values(), self.refs, self.types, strict=True):
            if ref() is not node or type(node) is not cls:
                return False
        if self._links(graph) != self.links:
            return False
        return all(c.holds(node) for c, node in zip(self.checks, nodes.values(), strict=True))

    def unchanged(self, node: FxNode) -> bool:
        """Whether ``node`` is one of the plan's and still as when the plan was made."""
        i = self.index.get(id(node))
        return i is not None and self.refs[i]() is node and self.checks[i].holds(node)

    @classmethod
    def of(cls, graph: FxGraph) -> _Plan:
        """The plan of ``graph``: validated and scheduled anew unless a valid one is kept."""
        plan = None
        if type(graph) is FxGraph:
            with cls._lock:
                plan = cls._plans.get(graph)
        if plan is None or not plan.valid_for(graph):
            plan = cls(graph)
            if type(graph) is FxGraph:
                with cls._lock:
                    if plan.keep:
                        cls._plans[graph] = plan
                    else:
                        cls._plans.pop(graph, None)
        return plan

    @classmethod
    @contextlib.contextmanager
    def current(cls, plan: _Plan) -> Iterator[_Plan]:
        """``plan`` as the calling thread's current plan (``_static``) inside the block."""
        prev = getattr(cls._local, "current", None)
        cls._local.current = plan
        try:
            yield plan
        finally:
            cls._local.current = prev


def _static(node: FxNode, what: str, compute: Callable[[], Any]) -> Any:
    """``compute()``, a value derived from ``node``'s attributes alone, kept in the running
    ``run_fx``'s plan (``_Plan``) for the next runs of the same graph where the node is unchanged
    since the plan was made (checked when the value is kept); otherwise computed."""
    plan = getattr(_Plan._local, "current", None)
    if plan is None or not plan.keep:
        return compute()
    key = (id(node), what)
    got = plan.static.get(key)
    if got is None:
        got = compute()
        if plan.unchanged(node):
            plan.static[key] = got
    return got


class _NeuronRun:
    """State of one neuron layer over a batch, advanced a chunk of timesteps at a time."""

    node: FxNeuron

    def run(self, a: _Val, out: Array, rec: dict[str, Array] | None, t0: int = 0) -> None:
        """Step through the timesteps of ``a`` (C, batch, *shape), steps ``t0`` to ``t0 + C`` of
        the run: spikes into ``out`` (same shape, bool; uint8 counts for a graded layer,
        ``spike_payload() > 1``) and, with ``rec`` (the run's (batch, timesteps, *shape) record
        arrays by state name), every state after step ``t0 + t`` into ``rec[name][:, t0 + t]``.
        Every entry of ``out`` must be written: it comes uninitialised from the run's pool."""
        x, fast = self.prepare(a)
        for t in range(x.shape[0]):
            self.step(x[t], fast, out[t])
            if rec is not None:
                for k, val in self.states().items():
                    rec[k][:, t0 + t] = val

    def prepare(self, a: _Val) -> tuple[Array, bool]:
        """The numpy path's transform of a chunk's input, once for all its timesteps (the result
        may live in a buffer that the next call overwrites)."""
        raise NotImplementedError

    def step(self, x: Array, fast: bool, out: Array | None = None) -> Array:
        """One timestep; returns spikes as bool (batch, *shape), written into ``out`` if given."""
        raise NotImplementedError

    def states(self) -> dict[str, Array]:
        raise NotImplementedError


class _LIFRun(_NeuronRun):
    node: FxLIF

    def __init__(self, node: FxLIF, batch: int, input_bound: int, kern: Any = None) -> None:
        self.node = node
        self.kern = kern
        self.params = p = LIFParams.of(node)
        self.half = 1 << (node.state_bits - 1)
        self.vmax = self.half - 1
        unity = 1 << node.decay_bits
        self.ku, self.kv = p.ku, p.kv
        self.bias = p.bias
        self.vth_eff = p.vth_eff
        self.unity = unity
        shape = (batch, *node.shape)
        b_max = int(np.abs(self.bias).max()) if self.bias.size else 0
        lb = lif_bounds(node, input_bound)  # docs/fixed-point.md 4.3
        # Float64 fast path: the decayed input stays inside one wrap period, so none of Lava's int32
        # wraps can trigger and every value is an integer far below 2**53.
        self.fast = lb.small and b_max <= 2**29
        self.wrap_u, self.sat_low, self.sat_high = lb.wrap_u, lb.sat_low, lb.sat_high
        if kern is not None:  # the compiled kernel follows the contract literally, in int64
            self.fast = False
            self.bias_n = _per_neuron(self.bias, node.shape)
        if self.fast:
            self.u = _full(node.u_init, shape, np.float64)
            self.v = _full(node.v_init, shape, np.float64)
            self.ku_f = self.ku / unity
            self.kv_f = self.kv / unity
            self.bias_f = self.bias.astype(np.float64) if self.bias.any() else None
            self.keep = np.empty(shape, dtype=bool)
        elif kern is not None:  # the compiled kernel's states live in the run's pool, set by its first call
            self.u, self.v = _state_buffer(shape), _state_buffer(shape)
            self.init = True
            self.u0, self.v0 = _static(node, "LIF initial states", lambda: (
                _per_neuron(node.u_init, node.shape), _per_neuron(node.v_init, node.shape)))
        else:
            self.u = _full(node.u_init, shape, np.int64)
            self.v = _full(node.v_init, shape, np.int64)
        self._x: Array | None = None  # the numpy path's input buffer (float64 path)

    def run(self, a: _Val, out: Array, rec: dict[str, Array] | None, t0: int = 0) -> None:
        if self.kern is None:
            return super().run(a, out, rec, t0)
        steps, batch = a.a.shape[:2]
        flat = (steps, batch, self.bias_n.size)
        ru, rv = _NO_REC, _NO_REC
        if rec is not None:
            rflat = (batch, rec["u"].shape[1], self.bias_n.size)
            ru, rv = _reshaped(rec["u"], rflat), _reshaped(rec["v"], rflat)
        a3, out3, bm = _kernel_layout(a.a, out, flat)
        init, self.init = self.init, False
        with self.kern.LOCK:
            getattr(self.kern, ACCELERATIONS["lif"])(a3, self.u.reshape(flat[1:]), self.v.reshape(flat[1:]),
                                out3.view(np.uint8), ru, rv, rec is not None, t0, bm, init, self.u0, self.v0,
                                self.ku, self.kv,
                                self.node.decay_bits, self.node.act_shift, self.bias_n, self.vth_eff,
                                self.half, self.vmax)
        return None

    def prepare(self, a: _Val) -> tuple[Array, bool]:
        if self.fast:
            # float64 throughout the time loop (mixed float32/float64 ufuncs are slower)
            self._x = _scratch(self._x, a.a.shape, np.float64)
            x = self._x[: a.a.shape[0]]
            np.multiply(a.a, float(1 << self.node.act_shift), out=x)
            return x, True
        return lif_input(self.params, a.as_int()), False

    def step(self, x: Array, fast: bool, out: Array | None = None) -> Array:
        s = self._step_fast(x, out) if fast else self._step_int(x)
        if out is not None and not fast:
            out[...] = s
        return s

    def _step_fast(self, x: Array, out: Array | None) -> Array:
        v = self.v
        if self.ku == 0 and not self.wrap_u:
            u = self.u = x  # u = x exactly: no decay term, no wrap possible (a view, not a copy)
        else:
            u = self.u if self.u is not x else np.array(x)
            if self.ku == 0:
                u[...] = x
            else:
                np.multiply(u, self.ku_f, out=u)
                np.trunc(u, out=u)
                np.add(u, x, out=u)
            self.u = u
        if self.wrap_u:
            np.subtract(u, 2 * self.half, out=u, where=u > self.half)
            np.add(u, 2 * self.half, out=u, where=u <= -self.half)
        if self.kv != self.unity:
            np.multiply(v, self.kv_f, out=v)
            np.trunc(v, out=v)
        np.add(v, u, out=v)
        if self.bias_f is not None:
            np.add(v, self.bias_f, out=v)
        if self.sat_low:
            np.maximum(v, -self.vmax, out=v)
        if self.sat_high:
            np.minimum(v, self.vmax, out=v)
        keep = self.keep
        np.less_equal(v, self.vth_eff, out=keep)
        np.multiply(v, keep, out=v)
        return np.logical_not(keep, out=out)

    def _step_int(self, x: Array) -> Array:
        """The contract (``contract.lif_update``, docs/fixed-point.md 4.2), int64."""
        new, s = lif_update(self.params, {"u": self.u, "v": self.v}, x)
        self.u, self.v = new["u"], new["v"]
        return s

    def states(self) -> dict[str, Array]:
        return {"u": self.u, "v": self.v}


class _PolyRun(_NeuronRun):
    node: FxPoly

    def __init__(self, node: FxPoly, batch: int, input_bound: int, kern: Any = None) -> None:
        self.node = node
        self.kern = kern
        shape = (batch, *node.shape)
        self.params = PolyParams.of(node)
        # the compiled kernel's states live in the run's pool, set to their initial values by its
        # first call (the numpy path replaces its states by new arrays each step: no gain there)
        if kern is None:
            self.v = _full(node.v_init, shape, np.int64)
            self.c = _full(node.c_init, shape, np.int64)
        else:
            self.v, self.c = _state_buffer(shape), _state_buffer(shape)
            self.init = True
        self.S, self.R = node.state_bits, node.acc_bits
        self.kc = self.params.kc
        self.coef = self.params.coef
        self.vth = self.params.vth
        # The current-bias register (docs/fixed-point.md 5, step 1): the kernel then reads
        # x = (a << in_shift) + c_bias, computed here, with its own in_shift set to 0.
        self.c_bias = self.params.c_bias
        if kern is not None:
            self.kargs = _static(node, "poly kernel arguments", lambda: self._kernel_args(node, self.params, kern))

    @staticmethod
    def _kernel_args(node: FxPoly, params: PolyParams, kern: Any) -> tuple[Any, ...]:
        """``poly_steps``' arguments after (a, v, c, spikes, rec_v, rec_c, record, t0, bm, init)."""
        S, R = node.state_bits, node.acc_bits
        n = int(np.prod(node.shape))

        # the polynomial is padded to degree 3 with zero leading coefficients (exact, see the kernel)
        d = node.degree
        coef = np.zeros((4, n), dtype=np.int64)
        coef[: d + 1] = params.coef.reshape(d + 1, n)
        shifts = [*node.shifts, *([0] * (3 - d))]
        consts = [kern.round_consts(sh, node.rounding) for sh in shifts]
        kc = _per_neuron(0 if params.kc is None else params.kc, node.shape)
        v_reset = _per_neuron(node.v_reset, node.shape)
        kargs = (coef, np.array(shifts, dtype=np.int64), np.array([c[0] for c in consts], dtype=np.int64),
                 np.array([c[1] for c in consts], dtype=np.int64), node.in_shift, params.kc is not None, kc,
                 node.decay_bits, *kern.round_consts(node.decay_bits, node.rounding),
                 _per_neuron(params.vth, node.shape),
                 node.reset == "value", v_reset, 1 << (S - 1), 1 << (R - 1), node.overflow == "saturate")
        # docs/fixed-point.md 5.2: the spike test, the payload cap and the floor (-2**(S-1), the
        # lowest ovf_S value, where there is none: max() is then the identity)
        floor = _per_neuron(-(1 << (S - 1)) if node.v_floor is None else node.v_floor, node.shape)
        # The kernel's int32 x int32 products are exact when every factor fits int32: states
        # (ovf_S, the reset, the floor and the initial values) and the Horner register (ovf_R)
        # do for S, R <= 32, the coefficients and kc are checked here.
        factors = (coef, kc, v_reset, floor, node.v_init, node.c_init)
        narrow = S <= 32 and R <= 32 and all(_fits_int32(f) for f in factors)
        kargs += (node.threshold == ">=", node.max_payload, floor, narrow, bool(coef[3].any()),
                  _per_neuron(node.v_init, node.shape), _per_neuron(node.c_init, node.shape))
        if params.c_bias is not None:
            kargs = (*kargs[:4], 0, *kargs[5:])  # in_shift (argument 4): applied in run()
        return kargs

    def run(self, a: _Val, out: Array, rec: dict[str, Array] | None, t0: int = 0) -> None:
        if self.kern is None:
            return super().run(a, out, rec, t0)
        steps, batch = a.a.shape[:2]
        flat = (steps, batch, int(np.prod(self.node.shape)))
        rv, rc = _NO_REC, _NO_REC
        if rec is not None:
            rflat = (batch, rec["v"].shape[1], flat[2])
            rv = _reshaped(rec["v"], rflat)
            rc = _reshaped(rec["c"], rflat) if "c" in rec else _NO_REC
        a_in = a.a if self.c_bias is None else poly_input(self.params, a.as_int())
        a3, out3, bm = _kernel_layout(a_in, out, flat)
        init, self.init = self.init, False
        with self.kern.LOCK:
            getattr(self.kern, ACCELERATIONS["poly"])(a3, self.v.reshape(flat[1:]), self.c.reshape(flat[1:]),
                                                      out3.view(np.uint8), rv, rc, rec is not None, t0, bm, init,
                                                      *self.kargs)
        return None

    def prepare(self, a: _Val) -> tuple[Array, bool]:
        return poly_input(self.params, a.as_int()), False

    def step(self, x: Array, fast: bool, out: Array | None = None) -> Array:
        """The contract (``contract.poly_update``, docs/fixed-point.md 5), int64."""
        new, s = poly_update(self.params, {"v": self.v, "c": self.c}, x)
        self.v, self.c = new["v"], new["c"]
        if out is not None:
            out[...] = s
        return s

    def states(self) -> dict[str, Array]:
        out = {"v": self.v}
        if self.kc is not None:
            out["c"] = self.c
        return out


class _ContractRun(_NeuronRun):
    """Any neuron primitive that registers its contract (``Primitive.params`` and ``step``): the
    step evaluated as written, int64, on the states named by ``node.state_names()``."""

    def __init__(self, node: FxNeuron, batch: int, input_bound: int, kern: Any = None) -> None:
        p = primitive_of(node)
        assert p.params is not None and p.step is not None
        self.node, self.contract_step, self.params = node, p.step, p.params(node)
        shape = (batch, *node.shape)
        self.state = {k: _full(getattr(node, f"{k}_init"), shape, np.int64) for k in node.state_names()}

    def prepare(self, a: _Val) -> tuple[Array, bool]:
        return a.as_int(), False

    def step(self, x: Array, fast: bool, out: Array | None = None) -> Array:
        new, s = self.contract_step(self.params, self.state, x)
        self.state = {k: np.asarray(new[k], dtype=np.int64) for k in self.state}
        if out is not None:
            out[...] = s
        return np.asarray(s)

    def states(self) -> dict[str, Array]:
        return dict(self.state)


#: fxsim's neuron implementations by primitive kind (the numpy path calls the contract step); a
#: neuron primitive without an entry here runs its registered contract step (``_ContractRun``).
NEURONS: dict[str, type[_NeuronRun]] = {"lif": _LIFRun, "poly": _PolyRun}


def _contract_kinds() -> set[str]:
    return {k for k, p in primitives().items() if p.role == "neuron" and p.step is not None and p.params is not None}


def _make_neuron(name: str, node: FxNode, batch: int, input_bound: int, kern: Any) -> _NeuronRun:
    kind = primitive_of(node, name).kind
    table = {**dict.fromkeys(_contract_kinds(), _ContractRun), **NEURONS}
    cls = lookup(table, kind, "fxsim's neuron engine", name)
    out: _NeuronRun = cls(node, batch, input_bound, kern)
    return out


def supported_kinds() -> frozenset[str]:
    """The primitive kinds fxsim runs: its per-kind tables, plus every neuron primitive with a
    registered contract step, plus the graph's input and output."""
    return frozenset({"input", "output", *SYNAPSES, *NEURONS, *RESHAPES, *_contract_kinds()})


# ---------------------------------------------------------------------------------------- driver


def _check_input(graph: FxGraph, x: Array, in_shape: tuple[int, ...]) -> Array:
    from lnm_deploy import validate

    return validate.spikes(x, in_shape, "input", allow_empty=True)


def _bounds(graph: FxGraph, order: Iterable[str], inputs: dict[str, tuple[tuple[str, bool], ...]],
            synapses: dict[str, _Synapse]) -> dict[str, int]:
    """Static bound on each neuron's input (``contract.neuron_input_bound`` of its synapses')."""
    return {name: neuron_input_bound([synapses[src].bounds.out for src, _ in inputs[name]])
            for name in order if graph.nodes[name].role == "neuron"}


KERNELS = ("auto", "numba", "numpy")
#: The compiled accelerations (functions of ``lnm_deploy.fxsim.kernels``) by primitive kind; each is
#: tested against the contract (``tests/test_primitives.py``).
ACCELERATIONS: dict[str, str] = {"dense": "dense_events", "conv2d": "conv_events", "lif": "lif_steps",
                                 "poly": "poly_steps"}
KERNELS_ENV = "LNM_DEPLOY_KERNELS"  # overrides "auto" everywhere (CLI included), e.g. =numpy


def load_kernels(kernels: str = "auto") -> Any:
    """The compiled kernels module for ``kernels`` ("auto": numba's when it is installed, unless
    the environment variable ``LNM_DEPLOY_KERNELS`` says otherwise; "numba": numba's or a
    ``DependencyError``; "numpy": none), or ``None`` for the numpy engine alone."""
    if kernels == "auto" and os.environ.get(KERNELS_ENV):
        kernels = os.environ[KERNELS_ENV]
        if kernels not in KERNELS:
            raise UserInputError(f"{KERNELS_ENV} must be one of {KERNELS}, got {kernels!r}")
    if kernels not in KERNELS:
        raise UserInputError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    if kernels == "numpy":
        return None
    try:
        kern = importlib.import_module("lnm_deploy.fxsim.kernels")
    except ImportError as e:
        if kernels == "numba":
            raise DependencyError(
                f"fxsim's compiled kernels need numba ({e}): pip install 'lnm-deploy[fast]', or pass kernels='numpy'"
            ) from e
        return None
    return kern


def run_fx(graph: FxGraph, x: Array, *, record: bool = False, progress: bool = False,
           engine: str = "auto", chunk: int | None = None, kernels: str = "auto") -> RunResult:
    """Run ``graph`` on binary spikes ``x`` shaped (samples, timesteps, *input_shape).

    Same time base as ``lnm_deploy.execute.run_float``: step t of every output answers step t of
    the input (zero latency along feed-forward edges, one step along back edges). Returns a
    ``RunResult`` with ``output`` and ``spikes`` (per spiking neuron layer) as uint8 (an Output
    reading a non-spiking readout, ``Primitive.output_state``: that state, int64) and, with
    ``record``, ``states`` as int64 (``u``, ``v`` for LIF; ``v`` and, with a synapse, ``c`` for the
    polynomial neuron), each (samples, timesteps, *shape), states after the reset.
    ``engine``: "auto" (layer-at-a-time when the graph has no back edge), "layer" or "step".
    ``chunk``: timesteps per chunk of the layer engine (default: about ``CHUNK_ROWS`` rows of
    timesteps * samples). ``kernels``: "auto" (compiled numba kernels for Dense, Conv2d, LIF and the
    polynomial neuron when numba is installed), "numba" or "numpy". Neither changes a result.

    Raises ``UserInputError`` when ``graph`` is not an ``FxGraph`` (a float ``Graph``, an
    ``Artifact``, None...: ``validate.fx_graph``) or ``x`` is not binary spikes of its input shape.
    """
    from lnm_deploy import validate

    validate.fx_graph(graph, "run_fx")
    plan = _Plan.of(graph)  # validates the graph (or finds it unchanged since it was validated)
    sched = plan.sched
    in_shape = sched.shapes[sched.input_node]
    xs = _check_input(graph, x, in_shape)
    batch, steps = xs.shape[:2]
    recurrent = any(d for ins in sched.inputs.values() for _, d in ins)
    if engine == "auto":
        engine = "step" if recurrent else "layer"
    if engine not in ("layer", "step"):
        raise UserInputError(f"engine must be 'auto', 'layer' or 'step', got {engine!r}")
    if engine == "layer" and recurrent:
        raise UnsupportedError("the layer engine cannot run a graph with back edges; use engine='step'")
    if chunk is None:
        chunk = max(1, -(-CHUNK_ROWS // max(batch, 1)))
    elif isinstance(chunk, (bool, np.bool_)) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise UserInputError(f"chunk must be a positive number of timesteps, got {chunk!r}")
    chunk = int(chunk)

    kern = load_kernels(kernels)

    with _Plan.current(plan):  # the engines' static arrays come from the plan
        synapses = {n: _make_synapse(n, graph.nodes[n], kern, plan.payloads[n]) for n in sched.order
                    if graph.nodes[n].role == "synapse"}
        in_bounds = _bounds(graph, sched.order, sched.inputs, synapses)
        pool = _Pool.take()  # handed back after the run (the neurons' states live in it)
        neurons = {n: _make_neuron(n, graph.nodes[n], batch, in_bounds[n], kern) for n in in_bounds}
    # One chunk (the layer engine, usually): every layer runs in the result's (batch, timesteps)
    # layout and writes its spikes straight into the result. Else (timesteps, batch), chunk by
    # chunk, copied into the result's arrays at the end. Every neuron engine writes every entry of
    # its chunk (no zero-filling needed).
    batch_major = engine == "layer" and chunk >= steps
    spikes = {n: (np.empty((batch, steps, *sched.shapes[n]), dtype) if batch_major
                  else pool.empty((steps, batch, *sched.shapes[n]), dtype))
              for n, run in neurons.items()
              for dtype in [np.uint8 if run.node.spike_payload() > 1 else bool]}
    out_src = sched.inputs[sched.output_node][0][0]
    # A non-spiking readout (Primitive.output_state) outputs a state: recorded for the output.
    graded = output_state(graph.nodes[out_src], out_src) if out_src in neurons else None
    # recorded straight into the result's (batch, timesteps) arrays: every layer's with ``record``,
    # else only a readout's that the output is
    states_bt = {n: {k: np.zeros((batch, steps, *sched.shapes[n]), dtype=np.int64) for k in run.states()}
                 for n, run in neurons.items() if record or (graded is not None and n == out_src)}

    try:
        if batch and steps:  # an empty input gives an empty run (validate.spikes(allow_empty=True))
            _run(graph, sched, xs if batch_major else np.moveaxis(xs, 1, 0), synapses, neurons, spikes, states_bt,
                 progress, chunk if engine == "layer" else 1, batch_major)
        # time-major: always a copy, the arrays go back to the pool (a view, which
        # ascontiguousarray returns where batch or timesteps is 1, would be overwritten by the
        # thread's next run)
        spikes_bt = {n: (s if batch_major else np.array(np.moveaxis(s, 0, 1), order="C")).view(np.uint8)
                     for n, s in spikes.items() if output_state(graph.nodes[n], n) is None}
    finally:
        pool.give()
    output = spikes_bt[out_src] if graded is None else states_bt[out_src][graded]
    return RunResult(output=output, spikes=spikes_bt, states=states_bt if record else {})


def _apply_flatten(node: FxFlatten, a: Array, lead: int) -> Array:
    return a.reshape(*a.shape[:lead], -1)


#: fxsim's reshapes by primitive kind: ``(node, spikes, lead) -> spikes`` on (lead..., *shape).
RESHAPES: dict[str, Any] = {"flatten": _apply_flatten}


def _run(graph: FxGraph, sched: Schedule, xt: Array, synapses: dict[str, _Synapse],
         neurons: dict[str, _NeuronRun], spikes: dict[str, Array],
         states: dict[str, dict[str, Array]], progress: bool, chunk: int, batch_major: bool = False) -> None:
    """Both engines: chunks of ``chunk`` timesteps (1 when the graph has back edges) of ``xt``
    (T, B, ...) and ``spikes`` (T, B, *shape); ``batch_major``: one chunk of every timestep, ``xt``
    (B, T, ...) and ``spikes`` (B, T, *shape), every value in that layout (the neuron engines
    get their (T, B) views)."""
    steps, batch = xt.shape[:2]
    if batch_major:
        batch, steps = steps, batch
        assert chunk >= steps and not any(d for ins in sched.inputs.values() for _, d in ins)
    # a back edge's value at t = 0 is 0
    back_sources = {s for ins in sched.inputs.values() for s, d in ins if d}
    prev: dict[str, _Val] = {n: _Val(np.zeros((1, batch, *sched.shapes[n]), dtype=np.int64), 0)
                             for n in synapses if n in back_sources}
    # A neuron's undelayed synapses that nothing else reads: each after the first (in schedule
    # order) may add its products straight into the first one's output (``_Synapse.add_into``),
    # which saves the separate sum of ``_sum_inputs`` (residual blocks).
    readers: dict[str, list[str]] = {}
    for n in sched.order:
        for source, _ in sched.inputs.get(n, ()):
            readers.setdefault(source, []).append(n)
    host_of: dict[str, str] = {}
    for n in neurons:
        own = sorted((a for a, delayed in sched.inputs[n] if not delayed and a in synapses and readers[a] == [n]),
                     key=sched.order.index)
        host_of.update({a: own[0] for a in own[1:]})
    starts: Iterable[int] = range(0, steps, chunk)
    if progress:
        from lnm_deploy.progress import progress as progress_bar

        starts = progress_bar(starts, desc="fxsim", unit="chunk" if chunk > 1 else "step")
    for t0 in starts:
        t1 = min(steps, t0 + chunk)
        rows = (t1 - t0) * batch
        lead = (batch, steps) if batch_major else (t1 - t0, batch)
        vals: dict[str, Array | _Val] = {}
        added: set[str] = set()  # synapses whose products went into their host's output
        for name in sched.order:
            node = graph.nodes[name]
            role = node.role
            if role == "input":
                vals[name] = xt if batch_major else xt[t0:t1]
            elif role == "output":
                continue
            elif role == "reshape":
                src = vals[sched.inputs[name][0][0]]
                assert isinstance(src, np.ndarray)
                vals[name] = lookup(RESHAPES, node.kind, "fxsim's reshape engine", name)(node, src, 2)
            elif name in synapses:
                src = vals[sched.inputs[name][0][0]]
                assert isinstance(src, np.ndarray)
                x = src.reshape(rows, *src.shape[2:])
                host = vals.get(host_of.get(name, ""))
                if isinstance(host, _Val):
                    got = synapses[name].add_into(x, _Val(host.a.reshape(rows, *host.a.shape[2:]), host.bound))
                    if got is not None:
                        vals[host_of[name]] = _Val(got.a.reshape(host.a.shape), got.bound)
                        added.add(name)
                        continue
                v = synapses[name](x, reuse=True)
                vals[name] = _Val(v.a.reshape(*lead, *v.a.shape[1:]), v.bound)
            else:
                ins: list[_Val] = []
                for s, delayed in sched.inputs[name]:
                    if s in added:
                        continue
                    a = prev[s] if delayed else vals[s]
                    assert isinstance(a, _Val)
                    ins.append(a)
                rec = states.get(name)  # the layer's record arrays, if it is recorded
                a = _sum_inputs(ins)
                if batch_major:  # the engines' (T, B) views (_kernel_layout)
                    neurons[name].run(_Val(a.a.swapaxes(0, 1), a.bound), spikes[name].swapaxes(0, 1), rec, t0)
                    vals[name] = spikes[name]
                else:
                    neurons[name].run(a, spikes[name][t0:t1], rec, t0)
                    vals[name] = spikes[name][t0:t1]
        if back_sources:
            prev = {n: v for n, v in vals.items() if isinstance(v, _Val)}
