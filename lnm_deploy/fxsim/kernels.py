"""Compiled fxsim kernels (numba): the integer contract of ``docs/fixed-point.md``, element by element.

The numpy engine in ``sim.py`` is the reference; these kernels compute the same integers faster
(they are tested bit-exact against it, the big-integer oracle and Lava). This module imports
numba, an optional dependency (the ``fast`` extra): ``sim.py`` imports it only when asked to and
falls back to numpy when it is missing.

* ``dense_events``: a Dense synapse on binary spikes, event-driven: for each row, the weight rows
  of the inputs that spiked are added up. Exact whenever ``max_o sum_i |w[o, i]| < 2**31``, which
  the caller checks (no partial sum in the int32 accumulator can then overflow).
* ``conv_events``: a Conv2d synapse on binary spikes. Each input spike adds its weight taps to
  the outputs whose window holds it (event-driven, into a channels-last int32 tile that is then
  transposed; with one group the taps of a kernel row that land on consecutive outputs are one
  contiguous add), or, with one input and one output channel per group (sum pooling, depthwise
  skips), each output gathers its window. Exact under the same int32 condition. Indices in the
  inner loops are unsigned: numba's negative-index handling otherwise keeps those loops scalar
  (2-5x slower, measured).
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

# neurons per block of ``poly_steps`` and ``lif_steps`` (their states and parameters, at most 80
# bytes a neuron, stay in L1)
POLY_BLOCK = 256


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


@_inline
def mul(x, y, narrow):
    """``x * y`` in int64; ``narrow`` (a constant at each call site): both are known to fit int32,
    and the product is taken as int32 * int32 -> int64 (one vector instruction, ``vpmuldq``,
    against three for a full 64-bit product: measured 1.4x on ``poly_steps``)."""
    return np.int64(np.int32(x)) * np.int64(np.int32(y)) if narrow else x * y


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
def _tap_lists(n_in, k, stride, pad, dil, n_out):
    """For each input coordinate ``y``: the ``cnt[y]`` kernel taps ``tap[y, :cnt[y]]`` through
    which it reaches an output, and those outputs ``dst[y, :cnt[y]]`` (``(y + pad - i * dil) /
    stride`` where that is an integer in ``[0, n_out)``), so the scatter loops test nothing."""
    cnt = np.zeros(n_in, np.int64)
    tap = np.zeros((n_in, k), np.int64)
    dst = np.zeros((n_in, k), np.int64)
    for y in range(n_in):
        for i in range(k):
            p = y + pad - i * dil
            if p >= 0 and p % stride == 0 and p // stride < n_out:
                tap[y, cnt[y]] = i
                dst[y, cnt[y]] = p // stride
                cnt[y] += 1
    return cnt, tap, dst


@_jit
def _conv_depthwise(s, w, out, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, add):
    """``conv_events`` for one input and one output channel per group (sum pooling, depthwise
    1x1 skips), in the output's own layout: per channel and tap, the shifted (strided) input rows
    times the tap's weight are added to the output rows (vectorised over each output row)."""
    rows, cin, h_in, w_in = s.shape
    kh, kw = w.shape[1], w.shape[2]
    h_out, w_out = out.shape[2], out.shape[3]
    n_in, n_out = h_in * w_in, h_out * w_out
    ust = np.uint64(stride_w)
    for rc in prange(rows * cin):
        r = rc // cin
        c = rc - r * cin
        sc = s[r, c].reshape(n_in)
        oc = out[r, c].reshape(n_out)
        if not add:
            oc[:] = 0
        for i in range(kh):
            for j in range(kw):
                wv = np.int32(w[c, i, j, 0])
                x0 = j * dil_w - pad_w  # output ox reads input x = ox * stride_w + x0
                lo = max(0, (-x0 + stride_w - 1) // stride_w)
                hi = min(w_out, (w_in - x0 + stride_w - 1) // stride_w)
                for oy in range(h_out):
                    y = oy * stride_h - pad_h + i * dil_h
                    if y < 0 or y >= h_in or lo >= hi:
                        continue
                    ob = np.uint64(oy * w_out)
                    sb = np.uint64(y * w_in + x0)  # + ox * stride_w >= 0 for ox >= lo
                    # unsigned indices: no negative-index wraparound code (it blocks vectorising)
                    for ox in range(np.uint64(lo), np.uint64(hi)):
                        oc[ob + ox] += wv * np.int32(sc[sb + ox * ust])


@_jit
def _conv_rows(s, w, out, stride_h, stride_w, pad_h, pad_w, dil_h, add):
    """``conv_events`` for one group and no dilation along x: a spike at (c, y, x) reaches the
    outputs of a kernel row through the taps ``j = ph, ph + sw, ...`` (``ph = (x + pad_w) % sw``),
    that is a contiguous run of output columns, so per spike and kernel row it adds one
    contiguous stretch of weights (``nj * C_out`` values, laid out per phase in reverse tap order)
    to a channels-last accumulator whose columns are padded so that no run needs a bounds test;
    kernel rows come from the tap lists. The accumulator is then written out transposed."""
    rows, cin, h_in, w_in = s.shape
    kh, kw, cout = w.shape[1], w.shape[2], w.shape[3]
    h_out, w_out = out.shape[2], out.shape[3]
    ycnt, ytap, ydst = _tap_lists(h_in, kh, stride_h, pad_h, dil_h, h_out)
    njmax = (kw + stride_w - 1) // stride_w
    nj = np.zeros(stride_w, np.int64)  # taps per phase
    for ph in range(min(stride_w, kw)):
        nj[ph] = (kw - ph + stride_w - 1) // stride_w
    # wx[c, i, ph, t, k] = w[c, i, ph + (nj[ph] - 1 - t) * stride_w, k]: increasing output columns
    wx = np.zeros((cin, kh, stride_w, njmax, cout), np.int32)
    for ph in range(stride_w):
        for t in range(nj[ph]):
            wx[:, :, ph, t, :] = w[:, :, ph + (nj[ph] - 1 - t) * stride_w, :]
    wf = wx.reshape(cin * kh * stride_w * njmax * cout)
    # spike column x: phase, first output column of its run (may be < 0 or run past W_out: padding)
    xph = np.zeros(w_in, np.int64)
    xstart = np.zeros(w_in, np.int64)
    lo, hi = 0, w_out
    for x in range(w_in):
        ph = (x + pad_w) % stride_w
        xph[x] = ph
        xstart[x] = (x + pad_w - ph) // stride_w - nj[ph] + 1
        if nj[ph] > 0:
            lo = min(lo, xstart[x])
            hi = max(hi, xstart[x] + nj[ph])
    wt = hi - lo  # tile columns; output column ox is tile column ox - lo
    # offsets into the accumulator and the weights, precomputed: per spike column, per kernel row
    xcol = np.empty(w_in, np.uint64)
    xlen = np.empty(w_in, np.uint64)
    xwof = np.empty(w_in, np.uint64)
    for x in range(w_in):
        xcol[x] = (xstart[x] - lo) * cout
        xlen[x] = nj[xph[x]] * cout
        xwof[x] = xph[x] * njmax * cout
    yacc = np.empty((h_in, kh), np.uint64)
    ywof = np.empty((h_in, kh), np.uint64)
    for y in range(h_in):
        for a in range(ycnt[y]):
            yacc[y, a] = ydst[y, a] * wt * cout
            ywof[y, a] = ytap[y, a] * stride_w * njmax * cout
    ucout = np.uint64(cout)
    n_out = h_out * w_out
    for r in prange(rows):
        acc = np.zeros(h_out * wt * cout, np.int32)
        idx = np.empty(w_in + 1, np.int64)
        for c in range(cin):
            wc = np.uint64(c * kh * stride_w * njmax * cout)
            for y in range(h_in):
                na = ycnt[y]
                if na == 0:
                    continue
                srow = s[r, c, y]
                m = 0
                for x in range(w_in):  # branch-free list of the spikes of the row
                    idx[m] = x
                    m += srow[x] != 0
                for e in range(m):
                    x = idx[e]
                    n = xlen[x]
                    col = xcol[x]
                    wx0 = wc + xwof[x]
                    for a in range(na):
                        a0 = yacc[y, a] + col
                        w0 = ywof[y, a] + wx0
                        # unsigned indices into the whole arrays: LLVM vectorises this loop
                        # (as it does views of the stretch, which measured 10% slower)
                        for t in range(n):
                            acc[a0 + t] += wf[w0 + t]
        outr = out[r].reshape(cout * n_out)
        for oy in range(h_out):
            for o in range(cout):
                src = np.uint64((oy * wt - lo) * cout + o)
                dst = np.uint64((o * h_out + oy) * w_out)
                if add:
                    for ox in range(np.uint64(w_out)):
                        outr[dst + ox] += acc[src + ox * ucout]
                else:
                    for ox in range(np.uint64(w_out)):
                        outr[dst + ox] = acc[src + ox * ucout]


@_jit
def _conv_scatter(s, w, out, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, cin_g, add):
    """``conv_events`` in general: per row, the spikes of each input channel are listed
    (branch-free), each adds its ``C_out/groups`` weights of every tap that reaches an output
    into a channels-last accumulator (one contiguous add per tap, no bounds tests: the tap lists
    hold only taps that land), which is then written out transposed."""
    rows, cin, h_in, w_in = s.shape
    kh, kw, cout_g = w.shape[1], w.shape[2], w.shape[3]
    cout, h_out, w_out = out.shape[1], out.shape[2], out.shape[3]
    ycnt, ytap, ydst = _tap_lists(h_in, kh, stride_h, pad_h, dil_h, h_out)
    xcnt, xtap, xdst = _tap_lists(w_in, kw, stride_w, pad_w, dil_w, w_out)
    n_in, n_out = h_in * w_in, h_out * w_out
    wf = w.reshape(cin * kh * kw * cout_g)
    ucout_g = np.uint64(cout_g)
    ucout = np.uint64(cout)
    for r in prange(rows):
        acc = np.zeros(n_out * cout, np.int32)  # (H_out, W_out, C_out)
        idx = np.empty(n_in + 1, np.int64)
        sr = s[r].reshape(cin * n_in)
        for c in range(cin):
            o0 = (c // cin_g) * cout_g
            m = 0
            base = c * n_in
            for q in range(n_in):  # branch-free list of the spiking inputs of channel c
                idx[m] = q
                m += sr[base + q] != 0
            for e in range(m):
                q = idx[e]
                y = q // w_in
                x = q - y * w_in
                for a in range(ycnt[y]):
                    wy = (c * kh + ytap[y, a]) * kw
                    ay = ydst[y, a] * w_out
                    for b in range(xcnt[x]):
                        a0 = np.uint64((ay + xdst[x, b]) * cout + o0)
                        w0 = np.uint64((wy + xtap[x, b]) * cout_g)
                        for k in range(ucout_g):  # unsigned indices: see _conv_rows
                            acc[a0 + k] += wf[w0 + k]
        outr = out[r].reshape(cout * n_out)
        for o in range(cout):
            dst = np.uint64(o * n_out)
            if add:
                for p in range(np.uint64(n_out)):
                    outr[dst + p] += acc[p * ucout + np.uint64(o)]
            else:
                for p in range(np.uint64(n_out)):
                    outr[dst + p] = acc[p * ucout + np.uint64(o)]


@njit(cache=True)
def conv_events(s, w, out, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, cin_g, add=False):
    """``out[r, o, y, x] = sum_{c, i, j} weight[o, c, i, j] * s_pad[r, c, y*sh + i*dh, x*sw + j*dw]``
    (section 3.2 before the exponent; ``s_pad``: ``s`` zero-padded by ``pad_h``, ``pad_w``) for 0/1
    spikes ``s`` (rows, C_in, H, W) C-contiguous (uint8 is fastest), the weight rearranged as
    ``w`` (C_in, kh, kw, C_out / groups) int32 C-contiguous (``w[c, i, j, k] = weight[g *
    C_out/groups + k, c - g * cin_g, i, j]``, ``g = c // cin_g``) and int32 ``out`` (rows, C_out,
    H_out, W_out) C-contiguous: a spike at (c, y, x) reaches output row ``(y + pad - i * dil) /
    stride`` where that is an integer in range. Three loops, one result: one input and one output
    channel per group (pooling) gathers (``_conv_depthwise``); one group without dilation along
    x scatters runs of taps (``_conv_rows``); else ``_conv_scatter``. ``add``: add the products
    to ``out``'s values instead (the caller proves that no sum leaves int32)."""
    cout_g = w.shape[3]
    if cin_g == 1 and cout_g == 1:
        _conv_depthwise(s, w, out, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, add)
    elif cin_g == s.shape[1] and dil_w == 1:
        _conv_rows(s, w, out, stride_h, stride_w, pad_h, pad_w, dil_h, add)
    else:
        _conv_scatter(s, w, out, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, cin_g, add)


@_jit
def lif_steps(a, u, v, spikes, rec_u, rec_v, record, t0, bm, init, u_start, v_start, ku, kv, decay_bits, act_shift,
              bias, vth_eff, half, vmax):
    """Section 4.2 for ``a`` (C, B, N) (any integer-valued dtype), states ``u``, ``v`` (B, N)
    int64 updated in place (``init``: set to every sample's ``u_start``, ``v_start`` (N,) first), ``spikes``
    (C, B, N) bool; ``bm`` (batch-major): ``a`` and ``spikes`` are (B, C, N) instead; with
    ``record``, ``rec_u``/``rec_v``
    (B, T, N) get the states after each step ``t`` at ``t0 + t``. Blocks of ``POLY_BLOCK`` neurons of a sample run
    through all the timesteps; the loop over a block is branch-free and indexed unsigned (it
    vectorises)."""
    steps, batch, n_neurons = a.shape
    if bm:
        steps, batch = batch, steps
    nblk = (n_neurons + POLY_BLOCK - 1) // POLY_BLOCK
    for bk in prange(batch * nblk):
        b = bk // nblk
        lo = (bk - b * nblk) * POLY_BLOCK
        hi = min(n_neurons, lo + POLY_BLOCK)
        ub, vb, biasb = u[b, lo:hi], v[b, lo:hi], bias[lo:hi]
        if init:
            ub[:] = u_start[lo:hi]
            vb[:] = v_start[lo:hi]
        for t in range(steps):
            ab = a[b, t, lo:hi] if bm else a[t, b, lo:hi]
            sb = spikes[b, t, lo:hi] if bm else spikes[t, b, lo:hi]
            for n in range(np.uint64(ub.size)):
                ud = trunc_shift(ub[n] * ku, decay_bits)
                x = wrap32(np.int64(ab[n]) << act_shift)
                q = wrap32(ud + x)
                # corr24: (-2^23, 2^23]
                q = q - 2 * half if q > half else (q + 2 * half if q <= -half else q)
                ub[n] = q
                vd = trunc_shift(vb[n] * kv, decay_bits)
                vp = min(max(wrap32(vd + q + biasb[n]), -vmax), vmax)
                s = vp > vth_eff
                sb[n] = s
                vb[n] = 0 if s else vp
            if record:
                rec_u[b, t0 + t, lo:hi] = ub
                rec_v[b, t0 + t, lo:hi] = vb


@_inline
def _poly_block(ab, vb, cb, sb, kcb, c0b, c1b, c2b, c3b, vthb, vrb, vfb, in_shift, decay_bits, dadd, dtmask,
                rc, reset_value, half_s, half_r, sat, ge, max_payload, graded, syn, cubic, narrow):
    """One timestep of ``poly_steps`` for a block of neurons (views). ``graded``, ``syn``
    (a current state), ``cubic`` (a nonzero coefficient of degree 3) are constants at each call
    site, so each call compiles to its own branch-free loop; leaving a step out is exact: without
    a current state ``c' = ovf_S(x)`` (``kc`` is 0 there: ``rnd(0) = 0``), below degree 3 the
    first Horner register is ``coef[2]`` (``rnd(0 * v) = 0``). ``narrow``: every factor of a
    product (states, Horner register, coefficients, ``kc``) fits int32 (``mul``). Each call site
    is inlined and compiled once more, which the bounds-checked test build pays for every
    signature: ``poly_steps`` has three (``poly_steps``' docstring). ``rc``: the Horner
    steps' shifts and ``round_consts`` (a tuple: CPython passes more than 30 arguments as
    ``*args``, which numba cannot inline)."""
    s0, s1, s2, a0, a1, a2, m0, m1, m2 = rc
    for n in range(np.uint64(vb.size)):
        x = np.int64(ab[n]) << in_shift
        vo = vb[n]
        if syn:
            cn = ovf(rnd(mul(cb[n], kcb[n], narrow), decay_bits, dadd, dtmask) + x, half_s, sat)
        else:
            cn = ovf(x, half_s, sat)
        cb[n] = cn
        if cubic:
            h = ovf(rnd(mul(c3b[n], vo, narrow), s2, a2, m2) + c2b[n], half_r, sat)
        else:
            h = c2b[n]
        h = ovf(rnd(mul(h, vo, narrow), s1, a1, m1) + c1b[n], half_r, sat)
        h = ovf(rnd(mul(h, vo, narrow), s0, a0, m0) + c0b[n], half_r, sat)
        vp = ovf(h + cn, half_s, sat)
        th = vthb[n]
        s = vp >= th if ge else vp > th
        if graded:
            cnt = min(vp // th, max_payload) if s else np.int64(0)
            sb[n] = cnt
            reset = vrb[n] if reset_value else ovf(vp - cnt * th, half_s, sat)
        else:
            sb[n] = s
            reset = vrb[n] if reset_value else ovf(vp - th, half_s, sat)
        vb[n] = max(reset if s else vp, vfb[n])


@_jit
def poly_steps(a, v, c, spikes, rec_v, rec_c, record, t0, bm, init, coef, shifts, adds, tmasks, in_shift,
               has_syn, kc, decay_bits, dadd, dtmask, vth, reset_value, v_reset, half_s, half_r, sat,
               ge, max_payload, v_floor, narrow, cubic, v_start, c_start):
    """Section 5 for ``a`` (C, B, N), states ``v``, ``c`` (B, N) int64 in place (``init``: set to
    every sample's ``v_start``, ``c_start`` (N,) first; ``bm``, batch-major: ``a`` and ``spikes`` are
    (B, C, N) instead); with ``record``,
    ``rec_v``/``rec_c`` (B, T, N) get the states after each step ``t`` at ``t0 + t``. ``coef`` (4, N)
    is padded with zero leading coefficients to degree 3, ``shifts`` (3,) accordingly: a zero
    register stays zero through ``rnd`` and takes the next coefficient exactly, so every degree
    runs the same three Horner steps. ``adds``/``tmasks``/``dadd``/``dtmask``: ``round_consts``
    of each shift and of the decay; ``half_s``/``half_r``: ``2**(S-1)``, ``2**(R-1)``; ``sat``:
    saturate (else wrap); per-neuron ``kc = 2**D - syn_decay`` (0 without a current state:
    ``has_syn`` False), ``vth``, ``v_reset`` (N,). Section 5.2: ``ge`` (test ``v' >= vth``),
    ``max_payload`` (1: binary; else the count ``min(v' // vth, max_payload)``), ``v_floor`` (N,)
    (``-2**(S-1)`` where there is none: then the identity). ``narrow``: every factor of a product
    fits int32 (the caller proves it: ``R, S <= 32`` and every coefficient, ``kc``, reset, floor
    and initial state in int32); ``cubic``: some degree-3 coefficient is nonzero (else that
    Horner step is left out, exactly). ``spikes`` is uint8 (a bool array is passed as its uint8
    view). The loop over neurons is branch-free (selects) and indexed unsigned, so that it
    vectorises. Three compiled copies of the block: graded and binary with every step and 64-bit
    products, and binary with narrow products and no cubic step (measured on a degree-2 layer of
    16384 neurons: 1.8x faster; a fourth copy, narrow with the cubic step, would cost every
    first run its compile time)."""
    steps, batch, n_neurons = a.shape
    if bm:
        steps, batch = batch, steps
    s0, s1, s2 = shifts[0], shifts[1], shifts[2]
    a0, a1, a2 = adds[0], adds[1], adds[2]
    m0, m1, m2 = tmasks[0], tmasks[1], tmasks[2]
    c0, c1, c2, c3 = coef[0], coef[1], coef[2], coef[3]
    rc = (s0, s1, s2, a0, a1, a2, m0, m1, m2)
    nblk = (n_neurons + POLY_BLOCK - 1) // POLY_BLOCK
    for bk in prange(batch * nblk):
        b = bk // nblk
        lo = (bk - b * nblk) * POLY_BLOCK
        hi = min(n_neurons, lo + POLY_BLOCK)
        # a block of neurons through all the timesteps: its states and parameters stay in L1
        vb, cb = v[b, lo:hi], c[b, lo:hi]
        if init:
            vb[:] = v_start[lo:hi]
            cb[:] = c_start[lo:hi]
        kcb, c0b, c1b, c2b, c3b = kc[lo:hi], c0[lo:hi], c1[lo:hi], c2[lo:hi], c3[lo:hi]
        vthb, vrb, vfb = vth[lo:hi], v_reset[lo:hi], v_floor[lo:hi]
        for t in range(steps):
            ab = a[b, t, lo:hi] if bm else a[t, b, lo:hi]
            sb = spikes[b, t, lo:hi] if bm else spikes[t, b, lo:hi]
            # three compiled copies of the block (compile time: each is inlined); a zero kc or
            # degree-3 coefficient is exact in every step (rnd(0) = 0)
            if max_payload > 1:
                _poly_block(ab, vb, cb, sb, kcb, c0b, c1b, c2b, c3b, vthb, vrb, vfb, in_shift, decay_bits, dadd,
                            dtmask, rc, reset_value, half_s, half_r, sat, ge, max_payload, True, True, True, False)
            elif narrow and not cubic:
                _poly_block(ab, vb, cb, sb, kcb, c0b, c1b, c2b, c3b, vthb, vrb, vfb, in_shift, decay_bits, dadd,
                            dtmask, rc, reset_value, half_s, half_r, sat, ge, max_payload, False, True, False, True)
            else:
                _poly_block(ab, vb, cb, sb, kcb, c0b, c1b, c2b, c3b, vthb, vrb, vfb, in_shift, decay_bits, dadd,
                            dtmask, rc, reset_value, half_s, half_r, sat, ge, max_payload, False, True, True, False)
            if record:
                rec_v[b, t0 + t, lo:hi] = vb
                if has_syn:  # rec_c is a 1-element placeholder otherwise
                    rec_c[b, t0 + t, lo:hi] = cb
