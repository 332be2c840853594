"""Reading a spiking NIR neuron as a non-spiking readout (``from_nir(readout_nodes=...)``, CLI
``--readout-node``): snnTorch's exporter writes a ``Leaky`` used as the readout as a spiking LIF. The
named neurons output their membrane (no threshold, no reset); the option is recorded in the
provenance and replayed by ``verify``; a name that is not a neuron of the graph is a clear error.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import nir
import numpy as np
import pytest
import snntorch as snn
import torch
from snntorch.export_nir import export_to_nir

from lnm_deploy.cli import main
from lnm_deploy.errors import LNMDeployWarning, UserInputError
from lnm_deploy.execute import run_float
from lnm_deploy.ir import Neuron
from lnm_deploy.nir_io import from_nir, read_nir, write_nir

B, T = 16, 24


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    torch.manual_seed(11)
    with warnings.catch_warnings():  # nirtorch / torch deprecation noise, and the snnTorch reset warning
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=LNMDeployWarning)
        yield


def _heaviside(v: torch.Tensor) -> torch.Tensor:
    return (v > 0).to(v.dtype)


def _snntorch_net() -> torch.nn.Sequential:
    """Linear -> spiking Leaky -> Linear -> Leaky readout (reset_mechanism="none", read for its
    membrane: ``output=True`` returns (spikes, membrane)); the readout's threshold is crossed, so a
    spiking reading would reset it."""
    lin1, lin2 = torch.nn.Linear(10, 12), torch.nn.Linear(12, 4)
    with torch.no_grad():
        lin1.weight.mul_(3.0)
        lin2.weight.mul_(2.0)
    hidden = snn.Leaky(beta=torch.rand(12) * 0.5 + 0.45, threshold=torch.rand(12) * 0.5 + 0.5, spike_grad=_heaviside,
                       init_hidden=True, reset_mechanism="zero", reset_delay=False)
    out = snn.Leaky(beta=torch.full((4,), 0.8), threshold=torch.full((4,), 0.5), spike_grad=_heaviside,
                    init_hidden=True, reset_mechanism="none", output=True)
    return torch.nn.Sequential(lin1, hidden, lin2, out).double()


def _membrane(net: torch.nn.Sequential, x: torch.Tensor) -> np.ndarray:
    for m in net:
        if isinstance(m, snn.SpikingNeuron):
            m.reset_mem()
    mem = []
    with torch.no_grad():
        for t in range(x.shape[1]):
            _, v = net(x[:, t])
            mem.append(v.numpy().copy())
    return np.stack(mem, axis=1)


def _export(net: torch.nn.Sequential) -> nir.NIRGraph:
    return export_to_nir(net, torch.zeros(1, 10, dtype=torch.float64), ignore_dims=[0])


def test_a_leaky_readout_is_read_as_its_membrane() -> None:
    net = _snntorch_net()
    g = _export(net)
    assert isinstance(g.nodes["3"], nir.LIF)  # what snnTorch writes for the readout
    x = (torch.rand(B, T, 10, dtype=torch.float64) < 0.3).double()
    mem = _membrane(net, x)
    assert np.max(mem) > 0.5  # above the threshold: read as a spiking LIF it would reset
    graph = from_nir(g, producer="snntorch", readout_nodes=["3"])
    node = graph.nodes["3"]
    assert isinstance(node, Neuron) and not node.spiking and node.metadata["read_as_readout"]
    assert graph.metadata["read_options"]["requested"]["readout_nodes"] == ["3"]
    np.testing.assert_array_equal(run_float(graph, x.numpy()).output, mem)  # snnTorch's own membrane
    spiking = from_nir(_export(net), producer="snntorch")  # the LIF as written: it resets
    assert not np.array_equal(run_float(spiking, x.numpy(), record=True).states["3"]["v_pre"], mem)


def test_a_readout_survives_our_own_file(tmp_path: Path) -> None:
    graph = from_nir(_export(_snntorch_net()), producer="snntorch", readout_nodes="3")
    write_nir(graph, tmp_path / "ours.nir")
    again = read_nir(tmp_path / "ours.nir")
    assert isinstance(again.nodes["3"], Neuron) and not again.nodes["3"].spiking


@pytest.mark.parametrize(("names", "why"), [(["nope"], "'nope'.*does not exist.*neurons: 1, 3"),
                                            (["2"], "'2'.*is a affine, not a neuron"),
                                            ([""], "must be node names")])
def test_a_name_that_is_not_a_neuron_is_an_error(names: list[str], why: str) -> None:
    with pytest.raises(UserInputError, match=why):
        from_nir(_export(_snntorch_net()), producer="snntorch", readout_nodes=names)


def test_cli_calibrates_and_verify_replays_the_readout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """calibrate --readout-node on snnTorch's file; verify reloads the float graph with it (the
    recorded options) and compares the readout's membrane bit-exact across backends."""
    d = tmp_path
    nir.write(d / "net.nir", _export(_snntorch_net()))
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", x=(rng.random((8, 16, 10)) < 0.3).astype(np.uint8))
    assert main(["calibrate", str(d / "net.nir"), "--target", "loihi2", "--data", str(d / "data.npz"),
                 "--producer", "snntorch", "--readout-node", "3", "--out", str(d / "art.nir"), "--quiet"]) == 0
    assert main(["verify", str(d / "art.nir"), "--data", str(d / "data.npz"), "--backend", "onnx",
                 "--readout", "membrane-last", "--json", str(d / "v.json"), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "readout '3' membrane" in text and "onnx bit-exact" in text and "as calibrated" in text
    doc = json.loads((d / "v.json").read_text())
    assert doc["float"]["read_options"]["requested"]["readout_nodes"] == ["3"]
    assert doc["membrane"]["backends"]["onnx"]["bit_exact"]
    assert main(["inspect", str(d / "art.nir")]) == 0
    text = capsys.readouterr().out  # inspect says how the graph it was calibrated from was read
    assert "calibrated from a graph read as: producer snntorch (argument): snnTorch 1.0.0's convention" in text
    assert "options given: producer=snntorch, readout_nodes=['3']" in text


def test_verify_reloads_with_every_recorded_reading_option(tmp_path: Path) -> None:
    """The float model verify compares with is read with the options recorded at calibration, the
    spike rules (spikes N, v_floor, threshold) and readout nodes included; a record edited to other
    rules than the artifact's neurons run is refused, not compared."""
    import copy

    from lnm_deploy.artifact import read_artifact, write_artifact
    from lnm_deploy.calibrate import calibrate_network, load_recipe
    from lnm_deploy.errors import GraphError
    from lnm_deploy.targets import load_target
    from lnm_deploy.verify import resolve_float_graph

    src = tmp_path / "net.nir"
    nir.write(src, _export(_snntorch_net()))
    rules = {"spikes": 3, "v_floor": -0.25, "threshold": ">="}
    graph = read_nir(src, producer="snntorch", readout_nodes=["3"], **rules)  # type: ignore[arg-type]
    x = (np.random.default_rng(1).random((8, 16, 10)) < 0.3).astype(np.uint8)
    res = calibrate_network(graph, x, load_target("loihi2"), load_recipe("default"), source=src, progress=False)
    write_artifact(res.artifact, tmp_path / "art.nir")
    art = read_artifact(tmp_path / "art.nir")
    model = resolve_float_graph(art)
    assert model.as_calibrated and not model.graph.nodes["3"].spiking  # type: ignore[attr-defined]
    hidden = model.graph.nodes["1"]
    assert isinstance(hidden, Neuron) and (hidden.max_spikes, hidden.threshold) == (3, ">=")
    assert np.array_equal(hidden.v_floor, np.full(12, -0.25))  # type: ignore[arg-type]
    assert model.read_options["requested"]["v_floor"] == -0.25  # type: ignore[index]
    record = copy.deepcopy(art.record)
    requested = record["provenance"]["source_graph"]["read_options"]["requested"]
    for key in rules:
        requested.pop(key)
    with pytest.raises(GraphError, match="other spike rules"):
        resolve_float_graph(type(art)(graph=art.graph, fx=art.fx, record=record))


@pytest.mark.parametrize("command", ["inspect", "calibrate"])
def test_a_readout_that_is_not_the_outputs_layer_is_refused_by_every_reader(
        command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--readout-node 1`` (a hidden layer): calibrate cannot run a non-spiking layer the Output
    does not read, so the reading refuses it, and inspect refuses it the same way (exit 2, the same
    line) instead of showing a reading that calibrate then refuses."""
    d = tmp_path
    nir.write(d / "net.nir", _export(_snntorch_net()))
    np.savez(d / "data.npz", x=np.zeros((2, 4, 10), np.uint8))
    tail = ["--target", "loihi2", "--data", str(d / "data.npz"), "--out", str(d / "art.nir"), "--quiet"]
    argv = [command, str(d / "net.nir"), "--producer", "snntorch", "--readout-node", "1"]
    assert main(argv + (tail if command == "calibrate" else [])) == 2
    err = capsys.readouterr().err
    assert (f"lnm-deploy {command}: error: node '1': readout node '1' (readout_nodes, CLI --readout-node) is not "
            "the network's readout (the Output reads '3')") in err
    assert "--readout-node 3" in err and not (d / "art.nir").exists()


def test_a_readout_node_given_twice_is_read_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A repeated name is harmless: read once, recorded once (the canonical sorted unique list that
    verify replays)."""
    graph = from_nir(_export(_snntorch_net()), producer="snntorch", readout_nodes=["3", "3"])
    assert graph.metadata["read_options"]["requested"]["readout_nodes"] == ["3"]
    nir.write(tmp_path / "net.nir", _export(_snntorch_net()))
    assert main(["inspect", str(tmp_path / "net.nir"), "--producer", "snntorch",
                 "--readout-node", "3", "--readout-node", "3"]) == 0
    assert "options given: producer=snntorch, readout_nodes=['3']" in capsys.readouterr().out


def test_an_unknown_readout_node_names_the_neurons_and_the_closest(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    nir.write(tmp_path / "net.nir", _export(_snntorch_net()))
    assert main(["inspect", str(tmp_path / "net.nir"), "--producer", "snntorch", "--readout-node", "33"]) == 2
    assert ("readout node '33' (readout_nodes, CLI --readout-node) does not exist; the graph's neurons: 1, 3 "
            "(closest: 3)") in capsys.readouterr().err
