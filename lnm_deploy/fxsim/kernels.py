"""Compiled fxsim kernels (numba): the integer contract of ``docs/fixed-point.md``, element by element.

The numpy engine in ``sim.py`` is the reference; these kernels compute the same integers faster
(they are tested bit-exact against it, the big-integer oracle and Lava). This module imports
numba, an optional dependency (the ``fast`` extra): ``sim.py`` imports it only when asked to and
falls back to numpy when it is missing.

* ``dense_events``: a Dense synapse on binary spikes, event-driven: for each row, the weight rows
  of the inputs that spiked are added up. Exact whenever ``max_o sum_i |w[o, i]| < 2**31``, which
  the caller checks (no partial sum in the int32 accumulator can then overflow).
* ``conv_events``: a Conv2d synapse on binary spikes, event-driven: each input spike adds its
  weight taps to the outputs whose window holds it. Exact under the same int32 condition.
* ``lif_steps``: the stock LIF (section 4.2) over a chunk of timesteps, literally, in int64.
* ``poly_steps``: the polynomial neuron (section 5) over a chunk of timesteps, in int64.

The kernels run in parallel (``prange``) over blocks of rows (Dense), rows (Conv2d) or over the samples of the
batch (neurons), so results never depend on the thread count. Callers hold ``LOCK``,
because numba's default threading layer must not be entered from two Python threads at once.
Compiled code is cached next to this file (``cache=True``), so only the first run compiles.
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit, prange

LOCK = threading.Lock()

_jit = njit(parallel=True, cache=True, nogil=True)
_inline = njit(inline="always", cache=True)


@_inline
def wrap32(x):
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


@_inline
def trunc_shift(x, s):
    # toward zero: add 2**s - 1 to negative values before the arithmetic shift
    return (x + ((x >> 63) & ((1 << s) - 1))) >> s


@_inline
def rnd(x, s, add, tmask):
    """``rnd(x, s)`` of the contract without a branch: ``add`` is ``2**(s-1)`` for nearest (else 0),
    ``tmask`` is ``2**s - 1`` for trunc (else 0); see ``round_consts``."""
    return (x + add + ((x >> 63) & tmask)) >> s


@_inline
def ovf(x, half, sat):
    """``sat`` or ``wrap`` of ``x`` to ``half = 2**(bits-1)`` (both computed; a select, no branch)."""
    wrapped = ((x + half) & ((half << 1) - 1)) - half
    saturated = min(max(x, 1 - half), half - 1)
    return saturated if sat else wrapped


def round_consts(shift: int, rounding: str) -> tuple[int, int]:
    """``(add, tmask)`` for ``rnd`` (``shift`` 0 is the identity for every mode)."""
    add = (1 << (shift - 1)) if rounding == "nearest" and shift > 0 else 0
    tmask = (1 << shift) - 1 if rounding == "trunc" else 0
    return add, tmask


@_jit
def dense_events(s, w, out):
    """out[r, o] = sum_i w[i, o] * s[r, i] for 0/1 spikes ``s`` (rows, fan_in), int32 ``w``
    (fan_in, fan_out) and int32 ``out`` (rows, fan_out)."""
    rows, fan_in = s.shape
    fan_out = w.shape[1]
    for blk in prange((rows + 31) // 32):
        acc = np.empty(fan_out, np.int32)
        idx = np.empty(fan_in + 1, np.int64)
        for r in range(blk * 32, min(rows, blk * 32 + 32)):
            m = 0
            sr = s[r]
            for i in range(fan_in):  # branch-free list of the inputs that spiked
                idx[m] = i
                m += sr[i] != 0
            acc[:] = 0
            j = 0
            while j + 3 < m:  # four weight rows per pass over the accumulator
                w0, w1, w2, w3 = w[idx[j]], w[idx[j + 1]], w[idx[j + 2]], w[idx[j + 3]]
                for o in range(fan_out):
                    acc[o] += (w0[o] + w1[o]) + (w2[o] + w3[o])
                j += 4
            while j < m:
                wj = w[idx[j]]
                for o in range(fan_out):
                    acc[o] += wj[o]
                j += 1
            out[r, :] = acc


@njit(cache=True)
def _taps(n_in, k, stride, pad, dil, n_out):
    """``tab[y, i]``: the output row that input row ``y`` reaches through kernel row ``i``, or -1."""
    tab = np.full((n_in, k), -1, np.int64)
    for y in range(n_in):
        for i in range(k):
            p = y + pad - i * dil
            if p >= 0 and p % stride == 0 and p // stride < n_out:
                tab[y, i] = p // stride
    return tab


@_jit
def conv_events(s, w, out, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, cin_g):
    """``out[r, o, y, x] = sum_{c, i, j} weight[o, c, i, j] * s_pad[r, c, y*sh + i*dh, x*sw + j*dw]``
    (section 3.2 before the exponent; ``s_pad``: ``s`` zero-padded by ``pad_h``, ``pad_w``) for 0/1
    spikes ``s`` (rows, C_in, H, W), the weight rearranged as ``w`` (C_in, kh, kw, C_out / groups)
    int32 (``w[c, i, j, k] = weight[g * C_out/groups + k, c - g * cin_g, i, j]``, ``g = c // cin_g``)
    and int32 ``out`` (rows, C_out, H_out, W_out): a spike at (c, y, x) reaches output row
    ``(y + pad - i * dil) / stride`` where that is an integer in range."""
    rows, cin, h_in, w_in = s.shape
    kh, kw, cout_g = w.shape[1], w.shape[2], w.shape[3]
    cout, h_out, w_out = out.shape[1], out.shape[2], out.shape[3]
    ytab = _taps(h_in, kh, stride_h, pad_h, dil_h, h_out)
    xtab = _taps(w_in, kw, stride_w, pad_w, dil_w, w_out)
    for r in prange(rows):
        acc = np.zeros((h_out, w_out, cout), np.int32)  # output channels innermost: one vector add per tap
        for c in range(cin):
            o0 = (c // cin_g) * cout_g
            for y in range(h_in):
                for x in range(w_in):
                    if s[r, c, y, x] == 0:
                        continue
                    for i in range(kh):
                        oy = ytab[y, i]
                        if oy < 0:
                            continue
                        for j in range(kw):
                            ox = xtab[x, j]
                            if ox < 0:
                                continue
                            a = acc[oy, ox]
                            wk = w[c, i, j]
                            for k in range(cout_g):
                                a[o0 + k] += wk[k]
        for o in range(cout):
            for y in range(h_out):
                for x in range(w_out):
                    out[r, o, y, x] = acc[y, x, o]


@_jit
def lif_steps(a, u, v, spikes, rec_u, rec_v, record, ku, kv, decay_bits, act_shift,
              bias, vth_eff, half, vmax):
    """Section 4.2 for ``a`` (C, B, N) (any integer-valued dtype), states ``u``, ``v`` (B, N)
    int64 updated in place, ``spikes`` (C, B, N) bool; with ``record``, ``rec_u``/``rec_v``
    (C, B, N) get the states after each step."""
    steps, batch, n_neurons = a.shape
    for b in prange(batch):
        for t in range(steps):
            for n in range(n_neurons):
                ud = trunc_shift(u[b, n] * ku, decay_bits)
                x = wrap32(np.int64(a[t, b, n]) << act_shift)
                q = wrap32(ud + x)
                if q > half:  # corr24: (-2^23, 2^23]
                    q -= 2 * half
                elif q <= -half:
                    q += 2 * half
                u[b, n] = q
                vd = trunc_shift(v[b, n] * kv, decay_bits)
                vp = min(max(wrap32(vd + q + bias[n]), -vmax), vmax)
                s = vp > vth_eff
                spikes[t, b, n] = s
                v[b, n] = 0 if s else vp
            if record:
                rec_u[t, b, :] = u[b]
                rec_v[t, b, :] = v[b]


@_jit
def poly_steps(a, v, c, spikes, rec_v, rec_c, record, coef, shifts, adds, tmasks, in_shift,
               has_syn, kc, decay_bits, dadd, dtmask, vth, reset_value, v_reset, half_s, half_r, sat,
               ge, max_payload, v_floor):
    """Section 5 for ``a`` (C, B, N), states ``v``, ``c`` (B, N) int64 in place. ``coef`` (4, N)
    is padded with zero leading coefficients to degree 3, ``shifts`` (3,) accordingly: a zero
    register stays zero through ``rnd`` and takes the next coefficient exactly, so every degree
    runs the same three Horner steps. ``adds``/``tmasks``/``dadd``/``dtmask``: ``round_consts``
    of each shift and of the decay; ``half_s``/``half_r``: ``2**(S-1)``, ``2**(R-1)``; ``sat``:
    saturate (else wrap); per-neuron ``kc = 2**D - syn_decay``, ``vth``, ``v_reset`` (N,).
    Section 5.2: ``ge`` (test ``v' >= vth``), ``max_payload`` (1: binary; else the count
    ``min(v' // vth, max_payload)``), ``v_floor`` (N,) (``-2**(S-1)`` where there is none: then
    the identity). ``spikes`` is uint8 (a bool array is passed as its uint8 view)."""
    steps, batch, n_neurons = a.shape
    s0, s1, s2 = shifts[0], shifts[1], shifts[2]
    a0, a1, a2 = adds[0], adds[1], adds[2]
    m0, m1, m2 = tmasks[0], tmasks[1], tmasks[2]
    for b in prange(batch):
        for t in range(steps):
            for n in range(n_neurons):
                x = np.int64(a[t, b, n]) << in_shift
                if has_syn:
                    cn = ovf(rnd(c[b, n] * kc[n], decay_bits, dadd, dtmask) + x, half_s, sat)
                else:
                    cn = ovf(x, half_s, sat)
                c[b, n] = cn
                vo = v[b, n]
                h = ovf(rnd(coef[3, n] * vo, s2, a2, m2) + coef[2, n], half_r, sat)
                h = ovf(rnd(h * vo, s1, a1, m1) + coef[1, n], half_r, sat)
                h = ovf(rnd(h * vo, s0, a0, m0) + coef[0, n], half_r, sat)
                vp = ovf(h + cn, half_s, sat)
                th = vth[n]
                s = vp >= th if ge else vp > th
                cnt = np.int64(0)
                if s:
                    cnt = min(vp // th, max_payload) if max_payload > 1 else np.int64(1)
                spikes[t, b, n] = cnt
                reset = v_reset[n] if reset_value else ovf(vp - cnt * th, half_s, sat)
                v[b, n] = max(reset if s else vp, v_floor[n])
            if record:
                rec_v[t, b, :] = v[b]
                if has_syn:  # rec_c is a 1-element placeholder otherwise
                    rec_c[t, b, :] = c[b]
