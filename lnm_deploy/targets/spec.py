"""Typed target descriptions and their TOML loader.

A target file has the sections ``[target]``, ``[dense]`` and optionally ``[conv]``, ``[sumpool]``,
``[neurons.lif]``, ``[neurons.poly]`` (at least one neuron). The keys of every section are the
fields of the dataclass below (read from the class, not retyped); unknown and missing keys,
wrong types and out-of-range widths raise ``UserInputError`` naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lnm_deploy.configfile import Range, fields_of, read_toml
from lnm_deploy.errors import UserInputError
from lnm_deploy.fixedpoint.arith import OVERFLOWS, ROUNDINGS
from lnm_deploy.fixedpoint.nodes import (
    OUT_BITS,
    SIGN_MODES,
    WEIGHT_EXP,
    FxDense,
    FxLIF,
    FxPoly,
)


@dataclass(frozen=True)
class TargetInfo:
    """``[target]``: identity and graph-level rules."""

    name: str
    description: str
    reference: str  # what the semantics are bit-exact with
    input: str  # "binary": spikes only
    recurrence: str  # "none" | "self" (self-loops through one synapse) | "any"
    flatten: bool


@dataclass(frozen=True)
class DenseSpec:
    """``[dense]``: Lava Dense; weights are clipped to ``weight_bits`` then LSB-truncated."""

    weight_bits: int
    num_weight_bits: Range
    weight_exp: Range
    sign_modes: tuple[str, ...]
    out_bits: int
    max_fan_in: int


@dataclass(frozen=True)
class ConvSpec:
    """``[conv]``: Lava Conv; weights used as given, output wraps to ``out_bits``."""

    weight: Range
    weight_exp: Range
    out_bits: int
    max_fan_in: int


@dataclass(frozen=True)
class SumPoolSpec:
    """``[sumpool]``: window sums of spikes (a unit-weight depthwise conv)."""

    out_bits: int
    max_window: int


@dataclass(frozen=True)
class LIFSpec:
    """``[neurons.lif]``: the stock Loihi LIF (``docs/fixed-point.md`` section 4)."""

    state_bits: int
    decay_bits: int
    vth_shift: int
    act_shift: int
    du: Range
    dv: Range
    vth: Range
    bias_mant: Range
    bias_exp: Range
    u_overflow: str
    v_overflow: str
    decay_rounding: str


@dataclass(frozen=True)
class PolySpec:
    """``[neurons.poly]``: the programmable polynomial neuron (section 5)."""

    max_degree: int
    state_bits: int
    acc_bits: int
    coef_bits: int
    decay_bits: int
    shift: Range
    in_shift: Range
    rounding: tuple[str, ...]
    overflow: tuple[str, ...]
    reset: tuple[str, ...]
    synapse: bool


@dataclass(frozen=True)
class Target:
    """A loaded, validated target file."""

    info: TargetInfo
    dense: DenseSpec
    conv: ConvSpec | None
    sumpool: SumPoolSpec | None
    lif: LIFSpec | None
    poly: PolySpec | None
    path: Path

    @property
    def name(self) -> str:
        return self.info.name

    def neurons(self) -> list[str]:
        return [n for n, s in (("lif", self.lif), ("poly", self.poly)) if s is not None]

    def summary(self) -> str:
        """One line with the key limits (for ``lnm-deploy targets``)."""
        d = self.dense
        parts = [f"dense {d.weight_bits}-bit weights, exp {d.weight_exp[0]}..{d.weight_exp[1]}"]
        if self.conv:
            parts.append(f"conv (weights {self.conv.weight[0]}..{self.conv.weight[1]})")
        if self.sumpool:
            parts.append("sumpool")
        if self.lif:
            parts.append(f"LIF ({self.lif.state_bits}-bit state, {self.lif.decay_bits}-bit decays)")
        if self.poly:
            p = self.poly
            parts.append(f"polynomial neuron deg<={p.max_degree} ({p.state_bits}-bit state, "
                         f"{p.acc_bits}-bit Horner register, {p.coef_bits}-bit coefficients)")
        return f"{self.name}: " + "; ".join(parts)


_SECTIONS: dict[str, type] = {
    "target": TargetInfo,
    "dense": DenseSpec,
    "conv": ConvSpec,
    "sumpool": SumPoolSpec,
    "neurons.lif": LIFSpec,
    "neurons.poly": PolySpec,
}
_REQUIRED = ("target", "dense")


def _section(file: Path, section: str, table: Any) -> Any:
    cls = _SECTIONS[section]
    return cls(**fields_of(file, section, table, cls, require_all=True))


def _check_width(file: Path, key: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise UserInputError(f"{file}: key '{key}' = {value} is out of range [{lo}, {hi}]")


def _check_in(file: Path, key: str, value: str | tuple[str, ...], allowed: tuple[str, ...]) -> None:
    for v in (value,) if isinstance(value, str) else value:
        if v not in allowed:
            raise UserInputError(f"{file}: key '{key}' has {v!r}; allowed: {list(allowed)}")


def _check_range_in(file: Path, key: str, r: Range, lo: int, hi: int) -> None:
    if r[0] < lo or r[1] > hi:
        raise UserInputError(f"{file}: key '{key}' = [{r[0]}, {r[1]}] exceeds [{lo}, {hi}]")


def _validate(t: Target) -> None:
    f = t.path
    _check_in(f, "target.input", t.info.input, ("binary",))
    _check_in(f, "target.recurrence", t.info.recurrence, ("none", "self", "any"))
    # The widths and ranges of every section lie inside those of its primitive (fixedpoint.nodes).
    d = t.dense
    dl = FxDense.limits()
    _check_width(f, "dense.weight_bits", d.weight_bits, 8, 8)  # Lava's Dense clips to 8 bits
    _check_range_in(f, "dense.num_weight_bits", d.num_weight_bits, dl["num_weight_bits"][0], d.weight_bits)
    _check_range_in(f, "dense.weight_exp", d.weight_exp, *dl["weight_exp"])
    _check_in(f, "dense.sign_modes", d.sign_modes, SIGN_MODES)
    _check_width(f, "dense.out_bits", d.out_bits, *dl["out_bits"])
    _check_width(f, "dense.max_fan_in", d.max_fan_in, 1, 2**24)
    if t.conv:
        _check_width(f, "conv.out_bits", t.conv.out_bits, *OUT_BITS)
        _check_range_in(f, "conv.weight", t.conv.weight, -(2**15), 2**15 - 1)
        _check_range_in(f, "conv.weight_exp", t.conv.weight_exp, *WEIGHT_EXP)
        _check_width(f, "conv.max_fan_in", t.conv.max_fan_in, 1, 2**24)
    if t.sumpool:
        _check_width(f, "sumpool.out_bits", t.sumpool.out_bits, *OUT_BITS)
        _check_width(f, "sumpool.max_window", t.sumpool.max_window, 1, 2**16)
    if t.lif is None and t.poly is None:
        raise UserInputError(f"{f}: a target needs [neurons.lif] or [neurons.poly]")
    if t.lif:
        lif = t.lif
        ll = FxLIF.limits(lif.decay_bits, lif.vth_shift)
        for key in ("state_bits", "decay_bits", "vth_shift", "act_shift"):
            _check_width(f, f"neurons.lif.{key}", getattr(lif, key), *ll[key])
        for key in ("du", "dv", "vth", "bias_mant", "bias_exp"):
            _check_range_in(f, f"neurons.lif.{key}", getattr(lif, key), *ll[key])
        # The stock LIF's rules are fixed (docs/fixed-point.md 4.2); fxsim implements exactly these.
        _check_in(f, "neurons.lif.u_overflow", lif.u_overflow, ("wrap",))
        _check_in(f, "neurons.lif.v_overflow", lif.v_overflow, ("saturate",))
        _check_in(f, "neurons.lif.decay_rounding", lif.decay_rounding, ("trunc",))
    if t.poly:
        p = t.poly
        pl = FxPoly.limits(p.state_bits, p.acc_bits)
        _check_width(f, "neurons.poly.max_degree", p.max_degree, *pl["degree"])
        for key in ("state_bits", "acc_bits", "coef_bits", "decay_bits"):
            _check_width(f, f"neurons.poly.{key}", getattr(p, key), *pl[key])
        _check_range_in(f, "neurons.poly.shift", p.shift, *pl["shifts"])
        _check_range_in(f, "neurons.poly.in_shift", p.in_shift, *pl["in_shift"])
        _check_in(f, "neurons.poly.rounding", p.rounding, ROUNDINGS)
        _check_in(f, "neurons.poly.overflow", p.overflow, OVERFLOWS)
        _check_in(f, "neurons.poly.reset", p.reset, FxPoly.RESETS)


def parse_target(path: str | Path) -> Target:
    """Load and validate one target file."""
    file, data = read_toml(path, "target file")
    return _target_from_data(file, data)


def target_from_toml(text: str, origin: str) -> Target:
    """Parse and validate a target description given as TOML text (an artifact embeds the text of
    the target it was calibrated for); ``origin`` names it in errors and becomes ``Target.path``."""
    from lnm_deploy.configfile import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserInputError(f"{origin}: not valid TOML ({e})") from e
    return _target_from_data(Path(origin), data)


def _target_from_data(file: Path, data: dict[str, Any]) -> Target:
    neurons = data.get("neurons", {})
    if not isinstance(neurons, dict):
        raise UserInputError(f"{file}: [neurons] must be a table")
    flat: dict[str, Any] = {k: v for k, v in data.items() if k != "neurons"}
    flat.update({f"neurons.{k}": v for k, v in neurons.items()})
    unknown = sorted(set(flat) - set(_SECTIONS))
    if unknown:
        raise UserInputError(f"{file}: unknown section(s) {unknown}; allowed: {sorted(_SECTIONS)}")
    for s in _REQUIRED:
        if s not in flat:
            raise UserInputError(f"{file}: missing section [{s}]")
    parts = {s: _section(file, s, flat[s]) for s in _SECTIONS if s in flat}
    t = Target(info=parts["target"], dense=parts["dense"], conv=parts.get("conv"),
               sumpool=parts.get("sumpool"), lif=parts.get("neurons.lif"),
               poly=parts.get("neurons.poly"), path=file)
    _validate(t)
    return t
