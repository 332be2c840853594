"""NIR import and export (``.nir`` files are HDF5, written and read with the ``nir`` package).

- ``to_nir`` / ``write_nir``: IR -> ``nir.NIRGraph`` / file. LNM neurons become the best-fitting NIR
  neuron (IF, LIF, CubaLIF, or their non-spiking I, LI, CubaLI), the exact semantics go in metadata.
- ``from_nir`` / ``read_nir``: ``nir.NIRGraph`` / file -> IR. lnm-deploy's own graphs come back
  bit-exactly; snnTorch's and Norse's exports and generic NIR are discretised per
  ``conventions`` (forward Euler with a producer-specific dt).
"""

from lnm_deploy.nir_io.conventions import DEFAULT_DT, PRODUCERS
from lnm_deploy.nir_io.read import (
    READ_OPTIONS_KEY,
    flatten_graph,
    from_nir,
    read_nir,
    read_nir_graph,
    reading_summary,
)
from lnm_deploy.nir_io.write import to_nir, write_nir

__all__ = ["DEFAULT_DT", "PRODUCERS", "READ_OPTIONS_KEY", "flatten_graph", "from_nir", "read_nir", "read_nir_graph", "reading_summary", "to_nir", "write_nir"]
