"""The NIR mapping per node kind: readers by NIR node class name, writers by IR kind.

``read.py`` registers one reader per NIR node type (``@reads``), ``write.py`` one writer per IR
node class (``@writes``); the graph-level code there looks a node up here and has no per-kind code.
An IR kind written onto a NIR type whose reader gives another kind (a node kind defined outside
the package, written as the nearest NIR neuron with its exact parameters in metadata) registers
the reader that restores it from lnm-deploy's own files (``@reads_exactly``); ``unregister_kind``
removes a kind's writer and exact reader. An unknown NIR node type or IR kind is an error that
lists the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nir
import numpy as np

from lnm_deploy.errors import GraphError, UnsupportedError
from lnm_deploy.ir import Node
from lnm_deploy.nir_io.conventions import Convention

Shape = tuple[int, ...]


@dataclass
class ReadContext:
    """How a whole graph is read: its producer, the step dt (seconds), whether it is lnm-deploy's own
    (nodes restored exactly from their ``lnm_*`` metadata), and the neurons found unstable."""

    producer: str
    dt: float
    exact: bool
    unstable: list[str] = field(default_factory=list)
    #: the producer's convention with the user's stated options (None for lnm-deploy's own graphs)
    convention: Convention | None = None


@dataclass(frozen=True)
class NodeRead:
    """One NIR node being read: its name, the node, its numeric parameters (finite arrays), its
    NIR metadata, the IR metadata to give the result, whether to restore it exactly, the shape its
    (feed-forward) input has in the IR (None when unknown) and the graph's ``ReadContext``."""

    name: str
    node: nir.NIRNode
    params: dict[str, np.ndarray]
    meta: dict[str, Any]
    ir_meta: dict[str, Any]
    exact: bool
    in_shape: Shape | None
    ctx: ReadContext


@dataclass(frozen=True)
class NirReader:
    """How one NIR node type becomes an IR node: ``convert``; ``kind``, the IR kind it gives;
    ``implied_input``, the input shape the NIR node implies by its parameters (None where it does
    not), used to drop a batch dimension some exporters record in the Input's shape."""

    nir_type: str
    kind: str
    convert: Callable[[NodeRead], Node]
    implied_input: Callable[[nir.NIRNode], Shape | None] | None = None


#: NIR node class name -> its reader (filled by ``lnm_deploy.nir_io.read``).
READERS: dict[str, NirReader] = {}
#: IR kind -> its writer ``(name, node, in_shape, out_shape, metadata) -> nir.NIRNode`` (filled by
#: ``lnm_deploy.nir_io.write``); ``metadata`` holds ``lnm_kind`` and the node's own metadata.
WRITERS: dict[str, Callable[..., nir.NIRNode]] = {}
#: IR kind -> the reader that restores a node of that kind from lnm-deploy's own files (NIR
#: metadata ``lnm_kind`` names the kind), whatever NIR type carries it; used before ``READERS``.
EXACT_READERS: dict[str, Callable[[NodeRead], Node]] = {}

F = TypeVar("F", bound=Callable[..., Any])


def reads(cls: type[Node], *nir_types: str,
          implied_input: Callable[[nir.NIRNode], Shape | None] | None = None) -> Callable[[F], F]:
    """Register the decorated ``convert(read: NodeRead) -> cls`` as the reader of ``nir_types``."""
    def deco(fn: F) -> F:
        for t in nir_types:
            if t in READERS:
                raise ValueError(f"NIR type {t} has two readers")
            READERS[t] = NirReader(t, cls.kind, fn, implied_input)
        return fn
    return deco


def writes(cls: type[Node]) -> Callable[[F], F]:
    """Register the decorated function as the NIR writer of IR nodes of class ``cls``."""
    def deco(fn: F) -> F:
        if cls.kind in WRITERS:
            raise ValueError(f"IR kind {cls.kind} has two NIR writers")
        WRITERS[cls.kind] = fn
        return fn
    return deco


def reads_exactly(cls: type[Node]) -> Callable[[F], F]:
    """Register the decorated ``convert(read: NodeRead) -> cls`` as the reader of the NIR nodes
    lnm-deploy wrote for IR kind ``cls.kind`` (``read.exact`` is True and ``read.meta`` holds what
    the kind's writer put there); ``ValueError`` if the kind has one already."""
    def deco(fn: F) -> F:
        if cls.kind in EXACT_READERS:
            raise ValueError(f"IR kind {cls.kind} has two exact NIR readers")
        EXACT_READERS[cls.kind] = fn
        return fn
    return deco


def unregister_kind(kind: str) -> None:
    """Remove the NIR writer and the exact reader of IR kind ``kind`` (registered with ``writes``
    / ``reads_exactly``); ``UnsupportedError`` listing the kinds with a writer when it has neither."""
    if kind not in WRITERS and kind not in EXACT_READERS:
        raise UnsupportedError(f"no NIR mapping for IR node kind {kind!r} to remove; kinds with one: "
                         f"{', '.join(sorted(WRITERS))}")
    WRITERS.pop(kind, None)
    EXACT_READERS.pop(kind, None)


def reader(nir_type: str, node: str | None = None) -> NirReader:
    """The reader of NIR node type ``nir_type``; ``UnsupportedError`` listing the known types."""
    if nir_type not in READERS:
        raise UnsupportedError(f"NIR node type {nir_type} is not supported; lnm-deploy reads "
                               f"{', '.join(sorted(READERS))}", node=node)
    return READERS[nir_type]


def writer(kind: str, node: str | None = None) -> Callable[..., nir.NIRNode]:
    """The NIR writer of IR kind ``kind``; ``GraphError`` listing the kinds that have one."""
    if kind not in WRITERS:
        raise GraphError(f"no NIR mapping for IR node kind {kind!r}; kinds with one: "
                         f"{', '.join(sorted(WRITERS))}", node=node)
    return WRITERS[kind]
