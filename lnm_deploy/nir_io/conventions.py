"""How NIR's continuous-time neurons become lnm-deploy's per-step neurons, and back.

NIR describes neurons as linear ODEs plus a threshold and carries **no dt**. Every producer
discretises them its own way, so the importer needs to know who wrote a graph (``producer``) and the
step ``dt`` (seconds). The conventions below were read from the exporters' sources (nir 1.0.8,
snnTorch 1.0.0, Norse 1.1.0) and are checked against each framework's own forward pass in
``tests/test_frameworks.py``.

Generic NIR (``producer="generic"``, also snnTorch): forward Euler, the input held constant over one
step. With ``k = dt / tau`` (per step)::

    LIF / LI      tau dv/dt = (v_leak - v) + r I     ->  P(v) = (1 - k) v + k v_leak,  in_gain = k r
    IF / I        dv/dt = r I                        ->  P(v) = v,                     in_gain = dt r
    CubaLIF/CubaLI synapse tau_syn dI/dt = -I + w_in S  ->  syn_decay = 1 - dt/tau_syn,
                                                          syn_gain  = (dt/tau_syn) w_in

- snnTorch 1.0.0 (``snntorch.export_nir.export_to_nir``) hard-codes ``dt = 1e-4`` and writes
  ``tau = dt/(1-beta)``, ``r = tau/dt``, ``v_leak = 0``, ``v_reset = 0`` (Leaky, RLeaky) and
  additionally ``tau_syn = dt/(1-alpha)``, ``w_in = tau_syn/dt`` (Synaptic, RSynaptic). With the
  generic rule and ``dt = 1e-4`` this gives back ``P(v) = beta v``, ``in_gain = 1``,
  ``syn_decay = alpha``, ``syn_gain = 1``. The decays are *snapped*: among the nearest floats of
  ``1 - dt/tau`` (in the file's precision) we take one that reproduces ``tau`` exactly through
  ``dt/(1 - decay)``, so a float32 or float64 ``beta`` comes back bit-exact; gains are computed as
  ``r / (tau/dt)`` so snnTorch's ``r = tau/dt`` gives exactly 1. It writes *every* reset as
  reset-to-zero without reset delay: ``reset_mechanism="subtract"`` (snnTorch's default) and
  ``reset_delay=True`` (the default) are lost without a trace in the file.
- Norse 1.1.0 (``norse.torch.to_nir``, default ``dt = 1e-3``, the same default as its cells) writes
  ``tau = dt / tau_mem_inv`` and ``tau_syn = dt / tau_syn_inv`` (a bug: the true time constant is
  ``1/tau_inv``), ``r = 1``, no ``v_reset`` (so NIR's default 0; the cell's ``v_reset`` is lost) and
  NIR's default ``w_in = 1``. Its cells step as ``v += dt*tau_mem_inv*((v_leak - v) + i)`` (LIFBox,
  LIBox, and LIF after the current jump ``i += x``), ``i *= 1 - dt*tau_syn_inv`` and, for IAF,
  ``v += x`` (no dt). So for Norse: ``tau_inv = dt / tau_written``, ``P(v) = (1 - dt tau_inv) v +
  dt tau_inv v_leak``, ``in_gain = dt tau_inv r``, ``syn_decay = 1 - dt tau_syn_inv``,
  ``syn_gain = w_in`` and, for IF / I, ``in_gain = r``. Its cells start at ``v = v_leak`` while
  lnm-deploy starts at 0 (equal for the default ``v_leak = 0``).
- lnm-deploy's own files carry the exact per-step neuron in node metadata (see ``write.py``); the
  NIR parameters there are the best linear (LIF) approximation for other readers.

The default dt when nothing says otherwise (generic graphs): ``DEFAULT_DT["generic"] = 1e-4`` s,
snnTorch's, the most common NIR producer; the importer warns that it was assumed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lnm_deploy.errors import GraphError

LNM_FORMAT = 2  # the newest version of the metadata layout below this reader reads
#: Format 2 added the spike rules of a neuron (``lnm_threshold``, ``lnm_max_spikes``, ``lnm_v_floor``);
#: a file is written as format 1 when no neuron uses them, so older readers still read it.
LNM_FORMAT_PLAIN = 1

DISCRETISATION = "forward-euler"
THRESHOLD_TEST = "v > v_th (v >= v_th where a neuron's lnm_threshold is '>=')"
TIMING = (
    "per step t: c[t] = syn_decay*c[t-1] + syn_gain*x[t] (no synapse: c[t] = x[t]); "
    "v'[t] = P(v[t-1]) + in_gain*c[t], P by Horner; f[t] = v'[t] > v_th (or >=, lnm_threshold); "
    "s[t] = f[t], or f[t]*clip(floor(v'[t]/v_th), 1, lnm_max_spikes) where lnm_max_spikes is written; "
    "v[t] = v_reset (reset 'value') or v'[t] - s[t]*v_th (reset 'subtract') where f[t], else v'[t], "
    "then max(v[t], lnm_v_floor) where written; states start at 0; "
    "input x[t] acts in the same step; recurrent (back) edges deliver the previous step's value"
)
FIT_DESCRIPTION = (
    "NIR parameters are the least-squares linear fit a + b v of P(v) over [lo, hi] = "
    "[min(v_reset, 0), v_th] (non-spiking: [-1, 1]), per neuron, discretised by forward Euler with dt: "
    "tau = dt/(1-b), v_leak = a/(1-b), r = in_gain/(1-b); synapse: tau_syn = dt/(1-syn_decay), "
    "w_in = syn_gain/(1-syn_decay); IF/I: r = in_gain/dt. Exact for degree <= 1."
)
# |1 - b| below this is written as +-MIN_LEAK: NIR's LIF cannot express a non-leaky membrane with a
# constant drift or a synapse (tau would be infinite).
MIN_LEAK = 1e-12


@dataclass(frozen=True)
class StepParams:
    """Per-step neuron parameters (float64, broadcastable to the population shape)."""

    decay: np.ndarray  # b in P(v) = a + b v
    offset: np.ndarray  # a
    in_gain: np.ndarray
    syn_decay: np.ndarray | None = None
    syn_gain: np.ndarray | None = None


# ----------------------------------------------------------------------------------------------
# Producer conventions: what a NIR file does not say, per framework, as data.

#: Values of the declarative fields of a ``Convention``.
LEAK_RULES = ("euler", "norse", "exp")
SYNAPSE_RULES = ("euler", "jump", "exp-after-input")
INTEGRATOR_RULES = ("dt*r", "r")
RESET_MODES_READ = ("value", "subtract")
THRESHOLD_TESTS = (">", ">=")
SPIKE_MULTIPLICITY = ("single", "multi")  # or a positive integer N: at most N spikes per step
INPUT_LAYOUTS = ("features", "time-first")


@dataclass(frozen=True)
class Convention:
    """How one producer's NIR neurons run, stated as data (no code paths per producer).

    Fields (each value one of the tuples above):

    - ``dt``: default step in seconds; None where the graph itself gives it back (Rockpool).
    - ``leak`` (LIF / LI / CubaLIF / CubaLI membrane): ``"euler"`` (``1 - dt/tau``, ``in_gain = r dt/tau``),
      ``"norse"`` (Norse 1.1.0's ``tau = dt/tau_inv``), ``"exp"`` (``exp(-dt/tau)``; the gain is
      ``leak_gain``).
    - ``leak_gain`` (``"exp"`` only): ``"norm"`` (``r (1 - decay)``, Sinabs' ``norm_input=True``),
      ``"one"`` (the input is added as it is: Rockpool's LIF and CubaLIF membrane) or ``"decay"``
      (added, then decayed: Rockpool's ``ExpSynTorch`` written as LI).
    - ``synapse`` (CubaLIF / CubaLI current): ``"euler"``, ``"jump"`` (``i = (1 - dt/tau_syn) i + w_in x``,
      Norse) or ``"exp-after-input"`` (``i = exp(-dt/tau_syn) (i + w_in x)``, Rockpool).
    - ``integrator`` (IF / I): ``"dt*r"`` (forward Euler of ``dv/dt = r I``) or ``"r"`` (``v += r x``).
    - ``reset``: ``"value"`` (to ``v_reset``) or ``"subtract"`` (``v - v_th``).
    - ``threshold``: the spike test, ``">"`` or ``">="`` (read into ``Neuron.threshold``).
    - ``spikes``: ``"single"`` (at most one per step), ``"multi"`` (``floor(v / v_th)`` per step, at
      most ``multi_cap``) or a positive integer N (``floor(v / v_th)`` per step, at most N: Sinabs
      ``MaxSpike(N)``, Rockpool ``max_spikes_per_dt=N``); read into ``Neuron.max_spikes``.
    - ``multi_cap``: the bound of ``"multi"``: None (unbounded: Sinabs ``MultiSpike``) or an
      integer (Rockpool's ``max_spikes_per_dt`` default 2**16).
    - ``v_floor``: the membrane's lower bound after reset (``Neuron.v_floor``): None (none), a
      number, or ``"-v_th"`` (minus each neuron's threshold, what Sinabs' own ``from_nir`` gives its
      IAF); never in a file, only stated by the user (``--v-floor``).
    - ``input_layout``: ``"features"`` (the Input's shape is one step's) or ``"time-first"`` (the
      exporter traced a ``(batch, time, features)`` sample, so an MLP's Input shape is ``(T, N)``).
    - ``membrane_floor``: the framework can clip the membrane from below (Sinabs ``min_v_mem``).
    - ``drops``: what the exporter loses without a trace (warned on import).
    - ``detect``: how a graph is recognised without being told (``"names"``: Rockpool's node names
      ``<i>_<Module>``; ``"hint"``: a parameter fingerprint, suggested but not applied; ``""``: none).
    """

    name: str
    framework: str
    dt: float | None
    leak: str = "euler"
    leak_gain: str = "norm"
    synapse: str = "euler"
    integrator: str = "dt*r"
    reset: str = "value"
    threshold: str = ">"
    spikes: str | int = "single"
    input_layout: str = "features"
    membrane_floor: bool = False
    drops: str = ""
    detect: str = ""
    multi_cap: int | None = None
    v_floor: float | str | None = None

    def with_options(self, **options: Any) -> Convention:
        """This convention with the fields a user stated (``reset``, ``threshold``, ``spikes``,
        ``v_floor``); ``ValueError`` naming the allowed values for a bad one."""
        allowed = {"reset": RESET_MODES_READ, "threshold": THRESHOLD_TESTS, "spikes": SPIKE_MULTIPLICITY,
                   "v_floor": ()}
        given: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
        for k, v in given.items():
            if k not in allowed:
                raise ValueError(f"unknown reading option {k!r}; options: {', '.join(allowed)}")
            if k == "spikes":
                given[k] = spikes_option(v)
            elif k == "v_floor":
                given[k] = v_floor_option(v)
            elif v not in allowed[k]:
                raise ValueError(f"{k}={v!r}: choose one of {', '.join(allowed[k])}")
        return replace(self, **given) if given else self

    @property
    def max_spikes(self) -> int | None:
        """``Neuron.max_spikes`` of this convention's spiking neurons: 1 (``"single"``), N, or
        ``multi_cap`` (``"multi"``: None is unbounded)."""
        if self.spikes == "single":
            return 1
        if self.spikes == "multi":
            return self.multi_cap
        return int(self.spikes)

    def describe(self) -> dict[str, Any]:
        """The declarative fields as plain data (recorded in the graph's ``read_options``)."""
        out = {k: getattr(self, k) for k in ("dt", "leak", "leak_gain", "synapse", "integrator", "reset",
                                             "threshold", "spikes", "input_layout", "membrane_floor")}
        out["max_spikes"] = self.max_spikes
        out["v_floor"] = self.v_floor
        return out


#: The largest N of ``spikes=N`` (a count per step; records and integer paths hold it in 32 bits).
MAX_SPIKES_OPTION = 2**31 - 1


def spikes_option(v: Any) -> str | int:
    """A ``spikes`` reading option checked: ``"single"``, ``"multi"`` or an integer N in 1 ..
    ``MAX_SPIKES_OPTION`` (an int or its decimal text); ``ValueError`` saying what is allowed."""
    if isinstance(v, str) and v in SPIKE_MULTIPLICITY:
        return v
    try:
        n = int(v)
        ok = not isinstance(v, bool) and 1 <= n <= MAX_SPIKES_OPTION and (not isinstance(v, float) or n == v)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"spikes={v!r}: choose one of {', '.join(SPIKE_MULTIPLICITY)}, or a positive integer N up to "
                         f"{MAX_SPIKES_OPTION} (at most N spikes per step)")
    return "single" if n == 1 else n


def v_floor_option(v: Any) -> float | str:
    """A ``v_floor`` reading option checked: a finite number or ``"-v_th"``; ``ValueError``."""
    if isinstance(v, str) and v.strip() == "-v_th":
        return "-v_th"
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = float("nan")
    if isinstance(v, bool) or not np.isfinite(f):
        raise ValueError(f"v_floor={v!r}: give a finite number (the membrane's lower bound after reset) or "
                         "'-v_th' (minus each neuron's threshold, as Sinabs' from_nir reads IF)")
    return f


CONVENTIONS: dict[str, Convention] = {c.name: c for c in (
    Convention("generic", "generic NIR", 1e-4),
    Convention("snntorch", "snnTorch 1.0.0", 1e-4, detect="hint",
               drops="reset_mechanism='subtract' and reset_delay are written as reset-to-zero; AvgPool2d's "
                     "padding is written as 0"),
    Convention("norse", "Norse 1.1.0", 1e-3, leak="norse", synapse="jump", integrator="r", detect="hint",
               drops="tau is written as dt/tau_inv; v_reset is not written"),
    # Sinabs 2.0 (sinabs.nir.to_nir): time constants in steps (dt = 1), alpha = exp(-1/tau),
    # norm_input=True, MultiSpike + MembraneSubtract (the defaults): (v > 0) * trunc(v / v_th)
    # spikes (so spikes where v >= v_th, unbounded), then v -= spikes * v_th.
    Convention("sinabs", "Sinabs 2.0", 1.0, leak="exp", leak_gain="norm", integrator="r", reset="subtract",
               threshold=">=", spikes="multi", input_layout="time-first", membrane_floor=True, detect="hint",
               drops="spike_fn, reset_fn, min_v_mem, norm_input and LIF's tau_syn (its synaptic current)"),
    # Rockpool 3.1 (rockpool.nn.modules.torch.nir.to_nir): exponential decays exp(-dt/tau), r written
    # as tau exp(-dt/tau)/dt (so dt comes back), input added to the current before its decay,
    # (v >= v_th) * floor(v / v_th) spikes capped at max_spikes_per_dt (default 2**16), subtractive reset.
    Convention("rockpool", "Rockpool 3.1", None, leak="exp", leak_gain="one", synapse="exp-after-input",
               integrator="r", reset="subtract", threshold=">=", spikes="multi", detect="names",
               drops="the bias (v_leak is written as 0) and the recurrent weights w_rec", multi_cap=2**16),
)}

#: Every ``producer`` name ``from_nir`` accepts: lnm-deploy's own files and the conventions above.
PRODUCERS: tuple[str, ...] = ("lnm-deploy", *CONVENTIONS)
DEFAULT_DT: dict[str, float] = {k: c.dt for k, c in CONVENTIONS.items() if c.dt is not None}

#: Rockpool's ``to_nir`` names nodes ``<index>_<Module class>``.
ROCKPOOL_MODULES = ("LinearTorch", "LIFTorch", "LIFNeuronTorch", "ExpSynTorch")


def rockpool_dt(tau: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per neuron, the ``dt`` that Rockpool's ``r = tau exp(-dt/tau) / dt`` was written with.

    With ``x = dt/tau``: ``x exp(x) = 1/r``, so ``x = W(1/r)`` (Lambert W, principal branch), solved
    by Newton's method in float64 (``r > 0``).
    """
    y = 1.0 / _f64(r)
    x = np.log1p(y)  # a start with x exp(x) close to y, from below
    for _ in range(60):
        ex = np.exp(x)
        x = x - (x * ex - y) / (ex * (1.0 + x))
    return x * _f64(tau)


def exp_leak(tau: np.ndarray, r: np.ndarray, v_leak: np.ndarray, dt: float, gain: str) -> StepParams:
    """Exact exponential decay ``exp(-dt/tau)`` of the membrane (Sinabs, Rockpool).

    The decay is rounded to the precision of ``tau`` as the frameworks store it (a float32 file gives
    a float32 ``alpha``, as Sinabs' and Rockpool's float32 parameters are). ``gain``: ``"norm"``
    (``r (1 - decay)``), ``"one"`` (1) or ``"decay"`` (``decay``); see ``Convention``.
    """
    t = np.asarray(tau)
    dtype = t.dtype if np.issubdtype(t.dtype, np.floating) else np.dtype(np.float64)
    with np.errstate(divide="ignore", over="ignore"):
        decay = _f64(np.exp(-dt / _f64(t)).astype(dtype))
    in_gain = {"norm": lambda: _f64(r) * (1.0 - decay), "one": lambda: np.ones_like(decay),
               "decay": lambda: decay}[gain]()
    offset = _f64(v_leak) * (1.0 - decay)
    return StepParams(decay=decay, offset=offset, in_gain=in_gain)


def exp_synapse_after_input(tau_syn: np.ndarray, w_in: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Rockpool's current ``i[t] = beta (i[t-1] + w_in x[t])``, ``beta = exp(-dt/tau_syn)``, returned
    as ``(syn_decay, syn_gain) = (beta, w_in)`` of the *undecayed* sum ``u[t] = i[t-1] + w_in x[t] =
    beta u[t-1] + w_in x[t]``; the membrane then takes ``i[t] = beta u[t]`` (the reader multiplies
    the neuron's ``in_gain`` by ``beta``). Every floating-point operation is then Rockpool's own, in
    its order: ``fl(fl(beta u) + x)`` and ``fl(beta u)`` (``w_in = 1``, what Rockpool writes)."""
    t = np.asarray(tau_syn)
    dtype = t.dtype if np.issubdtype(t.dtype, np.floating) else np.dtype(np.float64)
    decay = _f64(np.exp(-dt / _f64(t)).astype(dtype))
    return decay, _f64(w_in)


#: numpy dtype kinds of a real number: signed and unsigned integers, floats.
REAL_KINDS = "iuf"
_KIND_WORDS = {"b": "boolean", "c": "complex", "O": "Python objects", "U": "text", "S": "bytes (text)",
               "V": "raw bytes or records", "M": "dates", "m": "time spans"}


def as_array(x: Any, what: str = "a NIR parameter", node: str | None = None) -> np.ndarray:
    """A numpy array of ``x`` (numpy, python scalars, or CPU torch tensors), in its own precision
    (integers become float64).

    The one conversion of every number the NIR reader reads (node parameters, shapes, lnm-deploy's
    metadata): only real numbers (integer or float dtypes) are numbers. Complex values (whose
    imaginary part a cast would drop), booleans, text, bytes, Python objects and ragged lists raise
    ``GraphError`` naming ``what`` (e.g. ``"NIR parameter 'weight'"``) and ``node``.
    """
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged nested lists, objects numpy cannot convert
        raise GraphError(f"{what} is not an array of numbers ({type(e).__name__}: {e}); fix the exporter or "
                         "the file", node=node) from e
    if a.dtype.kind not in REAL_KINDS:
        kind = _KIND_WORDS.get(a.dtype.kind, str(a.dtype))
        fix = ("write its real part if that is meant, or fix the exporter" if a.dtype.kind == "c"
               else "write it as integers or floats (fix the exporter or the file)")
        raise GraphError(f"{what} is {kind} ({a.dtype}), not real numbers: parameters are real (integer or "
                         f"float); {fix}", node=node)
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    return a


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def snap(guess: np.ndarray, target: np.ndarray, forward: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Elementwise, the float nearest ``guess`` (within 2 ulp, in ``target``'s precision) whose
    ``forward`` reproduces ``target`` exactly; ``guess`` itself where none does.

    This inverts an exporter's ``target = forward(x)`` bit-exactly whenever the exporter computed it
    that way (e.g. snnTorch's ``tau = dt / (1 - beta)``), and is a no-op approximation otherwise.
    """
    guess = _f64(guess)
    dtype = target.dtype if np.issubdtype(target.dtype, np.floating) else np.dtype(np.float64)
    g = guess.astype(dtype)
    best = guess.copy()
    found = np.zeros(np.broadcast_shapes(g.shape, target.shape), dtype=bool)
    best = np.broadcast_to(best, found.shape).copy()
    cands = [g]
    for direction in (-np.inf, np.inf):
        c = g
        for _ in range(2):
            c = np.nextafter(c, np.asarray(direction, dtype=dtype))
            cands.append(c)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for c in cands:
            ok = ~found & (forward(c) == target)
            best = np.where(ok, _f64(c), best)
            found |= ok
    return best


def euler_leak(tau: np.ndarray, r: np.ndarray, v_leak: np.ndarray, dt: float) -> StepParams:
    """Generic NIR (and snnTorch): forward Euler of ``tau dv/dt = (v_leak - v) + r I``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        decay = snap(1.0 - dt / _f64(tau), tau, lambda b: dt / (1 - b))
        k = tau / dt  # native precision: snnTorch's r is exactly this, so in_gain = 1 exactly
        in_gain = _f64(r / k)
        offset = _f64(v_leak * (dt / tau))
    return StepParams(decay=decay, offset=offset, in_gain=in_gain)


def euler_synapse(tau_syn: np.ndarray, w_in: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Generic NIR (and snnTorch): forward Euler of ``tau_syn dI/dt = -I + w_in S``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        syn_decay = snap(1.0 - dt / _f64(tau_syn), tau_syn, lambda a: dt / (1 - a))
        syn_gain = _f64(w_in / (tau_syn / dt))
    return syn_decay, syn_gain


def norse_rate(tau_written: np.ndarray, dt: float) -> np.ndarray:
    """Norse 1.1.0 wrote ``tau = dt / tau_inv``; return ``tau_inv`` (1/s), snapped to invert it."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return snap(dt / _f64(tau_written), tau_written, lambda ti: dt / ti)


def norse_leak(tau_written: np.ndarray, r: np.ndarray, v_leak: np.ndarray, dt: float) -> StepParams:
    """Norse's ``v += dt*tau_inv*((v_leak - v) + r*i)`` as ``P(v) = a + b v`` and ``in_gain``."""
    k = dt * norse_rate(tau_written, dt)
    return StepParams(decay=1.0 - k, offset=k * _f64(v_leak), in_gain=k * _f64(r))


def norse_synapse(tau_syn_written: np.ndarray, w_in: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Norse's LIF current: ``i = i*(1 - dt*tau_syn_inv) + x`` (jump of ``w_in`` per unit input)."""
    return 1.0 - dt * norse_rate(tau_syn_written, dt), _f64(w_in)


def integrator_gain(r: np.ndarray, dt: float, rule: str) -> np.ndarray:
    """Per-step gain of NIR's IF / I (``dv/dt = r I``): ``dt r`` (rule ``"dt*r"``: generic, snnTorch),
    ``r`` (rule ``"r"``: Norse's, Sinabs' IAF, ``v += r x``). ``rule`` may also be a producer name."""
    if rule in CONVENTIONS:
        rule = CONVENTIONS[rule].integrator
    return _f64(r) if rule == "r" else _f64(r) * dt


# ----------------------------------------------------------------------------------------------
# Export direction: the LIF that best approximates an LNM neuron.


def fit_range(v_th: np.ndarray | None, v_reset: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Operating range ``[lo, hi]`` of the membrane for the linear fit, per neuron.

    ``[min(v_reset, 0), v_th]`` for a spiking neuron (ends swapped if v_th is below; widened to
    ``[lo, lo + 1]`` if empty), ``[-1, 1]`` for a non-spiking one.
    """
    if v_th is None:
        return np.full(shape, -1.0), np.full(shape, 1.0)
    lo0 = np.minimum(v_reset, 0.0)
    lo, hi = np.minimum(lo0, v_th), np.maximum(lo0, v_th)
    hi = np.where(hi > lo, hi, lo + 1.0)
    return np.broadcast_to(lo, shape).copy(), np.broadcast_to(hi, shape).copy()


def linear_fit(poly: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares (uniform weight) best line ``a + b v`` to ``P(v)`` on ``[lo, hi]``, per neuron.

    ``poly`` is (d+1, *shape), ascending. Degree <= 1 is returned exactly (``a = theta_0``,
    ``b = theta_1``). Otherwise P is expanded around the midpoint m with half-width h,
    ``Q(u) = P(m + h u)`` for ``u`` in [-1, 1], and projected on the Legendre polynomials 1 and u:
    ``mean = sum_{k even} q_k / (k+1)``, ``slope_u = 3 sum_{k odd} q_k / (k+2)``; then
    ``b = slope_u / h`` and ``a = mean - b m``.
    """
    d = poly.shape[0] - 1
    if d == 0:
        return poly[0].copy(), np.zeros_like(poly[0])
    if d == 1:
        return poly[0].copy(), poly[1].copy()
    m = (lo + hi) / 2.0
    h = (hi - lo) / 2.0
    q = [np.zeros_like(m) for _ in range(d + 1)]
    from math import comb

    for j in range(d + 1):
        for k in range(j + 1):
            q[k] = q[k] + poly[j] * comb(j, k) * m ** (j - k) * h**k
    mean = sum(q[k] / (k + 1) for k in range(0, d + 1, 2))
    slope_u = 3.0 * sum(q[k] / (k + 2) for k in range(1, d + 1, 2))
    b = slope_u / h
    a = mean - b * m
    return np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)


def leak_denominator(b: np.ndarray) -> np.ndarray:
    """``1 - b`` with magnitude at least ``MIN_LEAK`` (sign kept; 0 becomes +MIN_LEAK)."""
    d = 1.0 - b
    small = np.abs(d) < MIN_LEAK
    return np.where(small, np.where(d < 0, -MIN_LEAK, MIN_LEAK), d)
