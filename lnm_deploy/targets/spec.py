"""Typed target descriptions and their TOML loader: sections keyed by primitive.

A target file has a ``[target]`` section (``TargetInfo``: identity and graph-level rules) and one
section per integer primitive it offers, named by the primitive's kind (``[dense]``, ``[conv2d]``,
``[lif]``, ``[poly]``, ``[flatten]``, ...: see ``lnm_deploy.fixedpoint.primitives``). The keys of a
section are the fields of the primitive's spec dataclass (``Primitive.spec``, read from the class,
never retyped); a primitive without parameters has an empty section. The primitives every graph
has (``input``, ``output``) are offered implicitly. Unknown and missing sections and keys, wrong
types and values outside the primitive's limits raise ``UserInputError`` naming the file and the
key.

Files written in the format before sections were keyed by primitive (``[conv]``, ``[sumpool]``,
``[neurons.lif]``, ``[neurons.poly]``, ``[target] flatten``; artifacts embed such text) are
converted on load (``convert_old_format``).

Two optional sections describe the chip rather than a primitive (``docs/resources.md``):
``[resources]`` (``ResourceSpec``: chips, cores, neurons and synaptic memory per core) and
``[energy]`` (``EnergySpec``: published per-operation energy and time figures, and the cost of one
update of each neuron primitive, ``[energy.neuron_ops]``). A target without them loads as before;
the resource mapper and the cost model then say that it declares none.
"""

from __future__ import annotations

import warnings
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from lnm_deploy.configfile import convert, fields_of, read_toml
from lnm_deploy.errors import LNMDeployWarning, UnsupportedError, UserInputError
from lnm_deploy.fixedpoint.primitives import (
    ConvSpec,
    DenseSpec,
    LIFSpec,
    PolySpec,
    SpecCheck,
    primitives,
)

#: ``[target] input``: how inputs reach the chip ("binary": spikes only).
INPUTS: tuple[str, ...] = ("binary",)
#: ``[target] recurrence``: "none", "self" (self-loops through one synapse) or "any".
RECURRENCES: tuple[str, ...] = ("none", "self", "any")
#: ``[target] path_delays``: what the target does where the feed-forward paths into a layer cross
#: different numbers of synapses (each costs one step on the chip): "relay" (its backend delays
#: the shorter ones with relay neurons, ``lnm_deploy.lava_backend.align_paths``) or "equal" (it
#: cannot: every path into a layer must be equally long; ``check_graph`` refuses the rest).
#: Optional in a target file, "relay" by default.
PATH_DELAYS: tuple[str, ...] = ("relay", "equal")


@dataclass(frozen=True)
class TargetInfo:
    """``[target]``: identity and graph-level rules."""

    name: str
    description: str
    reference: str  # what the semantics are bit-exact with
    input: str  # one of INPUTS
    recurrence: str  # one of RECURRENCES
    path_delays: str = "relay"  # one of PATH_DELAYS

    def check(self, c: SpecCheck) -> None:
        c.member("input", self.input, INPUTS)
        c.member("recurrence", self.recurrence, RECURRENCES)
        c.member("path_delays", self.path_delays, PATH_DELAYS)


#: ``[resources] weight_storage``: how a synapse's weights occupy synaptic memory ("dense": every
#: synapse of the connectivity holds ``weight bits``, zero weights included; see docs/resources.md).
WEIGHT_STORAGES: tuple[str, ...] = ("dense",)


@dataclass(frozen=True)
class ResourceSpec:
    """``[resources]``: what one chip holds and how many chips the declared system has.

    ``chips``: chips in the system; ``cores_per_chip``: neuro cores per chip;
    ``neurons_per_core``: neurons one core updates; ``synaptic_memory_bits``: synaptic memory per
    core, in bits; ``weight_storage``: one of ``WEIGHT_STORAGES``; ``source``: where the values
    come from (printed with every mapping)."""

    chips: int
    cores_per_chip: int
    neurons_per_core: int
    synaptic_memory_bits: int
    weight_storage: str
    source: str

    def check(self, c: SpecCheck) -> None:
        for key in ("chips", "cores_per_chip", "neurons_per_core", "synaptic_memory_bits"):
            c.width(key, getattr(self, key), (1, 2**40))
        c.member("weight_storage", self.weight_storage, WEIGHT_STORAGES)

    @property
    def cores(self) -> int:
        """Cores in the declared system (``chips * cores_per_chip``)."""
        return self.chips * self.cores_per_chip

    def summary(self) -> str:
        kib = self.synaptic_memory_bits / 8 / 1024
        return (f"resources: {self.chips} chip(s) x {self.cores_per_chip} cores, {self.neurons_per_core} "
                f"neurons and {kib:g} KiB synaptic memory per core ({self.weight_storage} weights)")


@dataclass(frozen=True)
class NeuronOps:
    """The cost of one update of a neuron primitive, in arithmetic operations (multiply, add,
    shift, compare, select): ``base + per_state * len(node.state_names()) + per_degree * degree``
    (``degree`` = the node's polynomial degree, 0 for a node without one)."""

    base: int
    per_state: int
    per_degree: int

    def ops(self, states: int, degree: int) -> int:
        return self.base + self.per_state * states + self.per_degree * degree


@dataclass(frozen=True)
class EnergySpec:
    """``[energy]``: per-operation figures for estimates (energy in pJ, time in ns).

    ``synop_pj``/``synop_ns``: one synaptic operation (one spike through one stored synapse);
    ``neuron_update_pj``/``neuron_update_ns``: one update of the neuron the published figure was
    measured on, which takes ``reference_ops`` operations; a node's update costs that figure times
    its operations (``neuron_ops``) over ``reference_ops``;
    ``message_pj``/``message_ns``: one spike message from one core to another; ``source``: the
    publications (printed with every estimate). ``neuron_ops`` maps neuron primitive kinds to
    ``NeuronOps``."""

    synop_pj: float
    synop_ns: float
    neuron_update_pj: float
    neuron_update_ns: float
    message_pj: float
    message_ns: float
    reference_ops: int
    source: str
    neuron_ops: dict[str, NeuronOps]

    def __hash__(self) -> int:
        return hash((self.synop_pj, self.neuron_update_pj, self.message_pj, self.reference_ops,
                     tuple(sorted(self.neuron_ops.items()))))

    def summary(self) -> str:
        return (f"energy estimates: {self.synop_pj:g} pJ/synop, {self.neuron_update_pj:g} pJ per reference "
                f"neuron update, {self.message_pj:g} pJ/message (estimates; sources, and which figures are unverified, in the target file)")

    def ops_of(self, kind: str, node: str | None = None) -> NeuronOps:
        """The ``NeuronOps`` of neuron primitive ``kind``; ``UnsupportedError`` naming ``node`` and
        listing the kinds ``[energy.neuron_ops]`` prices when it has none."""
        try:
            return self.neuron_ops[kind]
        except KeyError:
            raise UnsupportedError(f"[energy.neuron_ops] has no update cost for neuron kind {kind!r}; it prices "
                                   f"{sorted(self.neuron_ops)}: add a line for it to the target file",
                                   node=node) from None


@dataclass(frozen=True, init=False)
class Target:
    """A loaded, validated target: ``info`` and the section of every primitive it offers.

    ``sections`` maps a primitive kind to its spec (an instance of ``Primitive.spec``, or None for
    a primitive without parameters), in registry order. ``resources`` (``[resources]``) and
    ``energy`` (``[energy]``) are None when the file has no such section.
    ``Target(info, sections, path, dense=spec)``
    and ``dataclasses.replace(target, dense=spec)`` replace (or, with None, drop) one section by kind.
    """

    info: TargetInfo
    sections: dict[str, Any]
    path: Path
    resources: ResourceSpec | None
    energy: EnergySpec | None

    def __init__(self, info: TargetInfo, sections: dict[str, Any], path: Path, *,
                 resources: ResourceSpec | None = None, energy: EnergySpec | None = None,
                 **replace: Any) -> None:
        reg = primitives()
        merged = dict(sections)
        for kind, spec in replace.items():
            if kind not in reg:
                raise TypeError(f"Target() got an unexpected keyword argument {kind!r} (not a primitive kind)")
            if spec is None:
                merged.pop(kind, None)
            else:
                merged[kind] = spec
        ordered = {k: merged[k] for k in reg if k in merged}
        ordered.update({k: v for k, v in merged.items() if k not in ordered})
        object.__setattr__(self, "info", info)
        object.__setattr__(self, "sections", ordered)
        object.__setattr__(self, "path", Path(path))
        object.__setattr__(self, "resources", resources)
        object.__setattr__(self, "energy", energy)

    def __hash__(self) -> int:
        return hash((self.info, tuple(self.sections.items()), self.path, self.resources, self.energy))

    @property
    def name(self) -> str:
        return self.info.name

    def offered(self) -> list[str]:
        """The kinds of every primitive the target offers, implicit ones included (registry order)."""
        return [k for k, p in primitives().items() if p.implicit or k in self.sections]

    def offers(self, kind: str) -> bool:
        """Whether the target offers primitive ``kind`` (implicit primitives always)."""
        p = primitives().get(kind)
        return kind in self.sections or (p is not None and p.implicit)

    def spec(self, kind: str, node: str | None = None) -> Any:
        """The section of primitive ``kind`` (None for a primitive without parameters);
        ``UnsupportedError`` naming ``node`` and listing what the target offers when it does not."""
        if kind in self.sections:
            return self.sections[kind]
        p = primitives().get(kind)
        if p is not None and p.implicit:
            return None
        hint = f"; {p.missing_hint}" if p is not None and p.missing_hint else ""
        raise UnsupportedError(f"target '{self.name}' does not offer the {kind!r} primitive "
                               f"(it offers {self.offered()}){hint}", node=node)

    @property
    def dense(self) -> DenseSpec:
        """``[dense]`` (``UnsupportedError`` when the target offers no dense synapse)."""
        out: DenseSpec = self.spec("dense")
        return out

    @property
    def conv(self) -> ConvSpec | None:
        """``[conv2d]``, None when not offered."""
        return self.sections.get("conv2d")

    @property
    def lif(self) -> LIFSpec | None:
        """``[lif]``, None when not offered."""
        return self.sections.get("lif")

    @property
    def poly(self) -> PolySpec | None:
        """``[poly]``, None when not offered."""
        return self.sections.get("poly")

    def neurons(self) -> list[str]:
        """The neuron primitives the target offers (registry order)."""
        reg = primitives()
        return [k for k in self.sections if k in reg and reg[k].role == "neuron"]

    def summary(self) -> str:
        """One line with the key limits (for ``lnm-deploy targets``)."""
        parts = [s.summary() for s in self.sections.values() if s is not None and hasattr(s, "summary")]
        parts += [s.summary() for s in (self.resources, self.energy) if s is not None]
        return f"{self.name}: " + "; ".join(parts)


def parse_target(path: str | Path) -> Target:
    """Load and validate one target file (a file in the old format is converted, with a warning)."""
    file, data = read_toml(path, "target file")
    if is_old_format(data):
        warnings.warn(f"{file}: target file in the old format ([neurons.lif], [conv], [target] flatten); "
                      "converted on load. Sections are now named by primitive: see docs/targets.md",
                      LNMDeployWarning, stacklevel=2)
    return _target_from_data(file, data)


def target_from_toml(text: str, origin: str) -> Target:
    """Parse and validate a target description given as TOML text (an artifact embeds the text of
    the target it was calibrated for, in either format); ``origin`` names it in errors and becomes
    ``Target.path``."""
    from lnm_deploy.configfile import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserInputError(f"{origin}: not valid TOML ({e})") from e
    return _target_from_data(Path(origin), data)


# ---------------------------------------------------------------------------- the old format

#: The old format's sections and the primitive kind each became; ``[sumpool]`` described a
#: primitive no network ever used (removed) and is dropped.
_OLD_SECTIONS: dict[str, str | None] = {"dense": "dense", "conv": "conv2d", "sumpool": None,
                                        "neurons.lif": "lif", "neurons.poly": "poly"}


def is_old_format(data: dict[str, Any]) -> bool:
    """Whether parsed TOML ``data`` is a target in the format before sections were keyed by
    primitive (it had ``[target] flatten`` and ``[neurons.*]``)."""
    info = data.get("target")
    return "neurons" in data or (isinstance(info, dict) and "flatten" in info)


def convert_old_format(file: Path | str, data: dict[str, Any]) -> dict[str, Any]:
    """The old format's ``data`` in the current one: ``[conv]`` -> ``[conv2d]``, ``[neurons.lif]``
    -> ``[lif]``, ``[neurons.poly]`` -> ``[poly]``, ``[target] flatten = true`` -> ``[flatten]``,
    ``[sumpool]`` dropped, and ``dense.weight_bits`` (the storage width, always 8) set to the
    width the quantizer rounds to, ``dense.num_weight_bits[1]``. The result is validated as usual."""
    out: dict[str, Any] = {}
    info = data.get("target")
    if isinstance(info, dict):
        info = dict(info)
        flatten = info.pop("flatten", False)
        if not isinstance(flatten, bool):
            raise UserInputError(f"{file}: key 'target.flatten' must be true or false, got {flatten!r}")
        out["target"] = info
        if flatten:
            out["flatten"] = {}
    elif info is not None:
        out["target"] = info
    flat: dict[str, Any] = {k: v for k, v in data.items() if k not in ("target", "neurons")}
    neurons = data.get("neurons", {})
    if not isinstance(neurons, dict):
        raise UserInputError(f"{file}: [neurons] must be a table")
    flat.update({f"neurons.{k}": v for k, v in neurons.items()})
    unknown = sorted(set(flat) - set(_OLD_SECTIONS))
    if unknown:
        raise UserInputError(f"{file}: unknown section(s) {unknown}; allowed: {sorted(_OLD_SECTIONS)} "
                             "(old target format)")
    for old, kind in _OLD_SECTIONS.items():
        if old in flat and kind is not None:
            out[kind] = flat[old]
    dense = out.get("dense")
    if isinstance(dense, dict) and dense.get("weight_bits") == 8:
        nwb = dense.get("num_weight_bits")
        if isinstance(nwb, list) and len(nwb) == 2 and isinstance(nwb[1], int) and not isinstance(nwb[1], bool):
            out["dense"] = {**dense, "weight_bits": nwb[1]}
    return out


# ------------------------------------------------------------------------------------ loading


def _target_from_data(file: Path, data: dict[str, Any]) -> Target:
    if is_old_format(data):
        data = convert_old_format(file, data)
    reg = primitives()
    sectioned = sorted(k for k, p in reg.items() if not p.implicit)
    if "target" not in data:
        raise UserInputError(f"{file}: missing section [target]")
    table = data["target"]
    if isinstance(table, dict):  # optional keys (files and embedded artifacts from before them)
        table = {"path_delays": TargetInfo.path_delays, **table}
    info = TargetInfo(**fields_of(file, "target", table, TargetInfo, require_all=True))
    info.check(SpecCheck(file, "target"))
    resources = energy = None
    if "resources" in data:
        resources = ResourceSpec(**fields_of(file, "resources", data["resources"], ResourceSpec, require_all=True))
        resources.check(SpecCheck(file, "resources"))
    sections: dict[str, Any] = {}
    for kind, table in data.items():
        if kind in CHIP_SECTIONS:
            continue
        p = reg.get(kind)
        if p is None or p.implicit:
            why = " (offered by every target, no section)" if p is not None else ""
            raise UserInputError(f"{file}: unknown section [{kind}]{why}; a section names a primitive the "
                                 f"target offers: [target] or one of {sectioned}")
        if p.spec is None:
            if not isinstance(table, dict) or table:
                raise UserInputError(f"{file}: [{kind}] takes no keys (the {kind!r} primitive has no "
                                     f"parameters), got {sorted(table) if isinstance(table, dict) else table!r}")
            sections[kind] = None
            continue
        if isinstance(table, dict):  # keys with a default (added later) are optional: older files and artifacts
            table = {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
                     for f in fields(p.spec) if f.default is not MISSING} | table
        spec = p.spec(**fields_of(file, kind, table, p.spec, require_all=True))
        spec.check(SpecCheck(file, kind))
        sections[kind] = spec
    for role in ("synapse", "neuron"):
        if not any(reg[k].role == role for k in sections):
            kinds = sorted(k for k, p in reg.items() if p.role == role)
            raise UserInputError(f"{file}: a target needs at least one {role} section, one of "
                                 f"{[f'[{k}]' for k in kinds]}")
    if "energy" in data:
        energy = _energy(file, data["energy"], [k for k in sections if reg[k].role == "neuron"])
    return Target(info=info, sections=sections, path=file, resources=resources, energy=energy)


#: The sections that describe the chip, not a primitive.
CHIP_SECTIONS: tuple[str, ...] = ("target", "resources", "energy")


def _energy(file: Path, table: Any, neurons: list[str]) -> EnergySpec:
    """``[energy]`` with its ``[energy.neuron_ops]``, which prices only neuron primitives the target
    offers (one it does not price is refused when a network using it is costed:
    ``EnergySpec.ops_of``)."""
    if not isinstance(table, dict):
        raise UserInputError(f"{file}: [energy] must be a table")
    table = dict(table)
    ops_table = table.pop("neuron_ops", None)
    if not isinstance(ops_table, dict):
        raise UserInputError(f"{file}: missing table [energy.neuron_ops] (the update cost of each neuron kind)")
    scalars = {f.name for f in fields(EnergySpec)} - {"neuron_ops"}
    unknown = sorted(set(table) - scalars)
    if unknown:
        raise UserInputError(f"{file}: unknown key(s) {[f'energy.{k}' for k in unknown]} in [energy]; "
                             f"allowed: {[*sorted(scalars), 'neuron_ops']}")
    missing = sorted(scalars - set(table))
    if missing:
        raise UserInputError(f"{file}: missing key(s) {missing} in [energy]")
    ops: dict[str, NeuronOps] = {}
    for kind, entry in ops_table.items():
        if kind not in neurons:
            raise UserInputError(f"{file}: [energy.neuron_ops] prices {kind!r}, which is not a neuron primitive "
                                 f"this target offers ({neurons})")
        ops[kind] = NeuronOps(**fields_of(file, f"energy.neuron_ops.{kind}", entry, NeuronOps, require_all=True))
        for key in ("base", "per_state", "per_degree"):
            SpecCheck(file, f"energy.neuron_ops.{kind}").width(key, getattr(ops[kind], key), (0, 10**6))
    values: dict[str, Any] = {}
    for key in sorted(scalars):
        hint = str if key == "source" else int if key == "reference_ops" else float
        values[key] = convert(f"{file}: key 'energy.{key}'", hint, table[key])
        if hint is float and not values[key] > 0:
            raise UserInputError(f"{file}: key 'energy.{key}' must be positive, got {values[key]!r}")
    return EnergySpec(neuron_ops=ops, **values)


def spec_keys(kind: str) -> list[str]:
    """The keys of the section of primitive ``kind`` (its spec dataclass's fields; [] without one)."""
    p = primitives().get(kind)
    if p is None:
        raise UnsupportedError(f"unknown integer primitive kind {kind!r}; known: {sorted(primitives())}")
    return [f.name for f in fields(p.spec)] if p.spec is not None else []


__all__ = [
    "CHIP_SECTIONS",
    "INPUTS",
    "RECURRENCES",
    "WEIGHT_STORAGES",
    "ConvSpec",
    "DenseSpec",
    "EnergySpec",
    "LIFSpec",
    "NeuronOps",
    "PolySpec",
    "ResourceSpec",
    "Target",
    "TargetInfo",
    "convert_old_format",
    "is_old_format",
    "parse_target",
    "spec_keys",
    "target_from_toml",
]
