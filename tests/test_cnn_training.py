"""A trained convolutional LNM network end to end (issue 14, "Model side"): the 8x8 digits as
1x8x8 images (bundled with scikit-learn, no download), ``train_digits_cnn`` (the VGG-style builder
with BatchNorm and max pooling, and the ResNet-style one with identity and projected skips;
surrogate-gradient BPTT), export with ``model_to_ir`` (BatchNorm folded,
max pooling as an OR layer), calibrate for loihi2, fixed-point accuracy against float, and Lava
bit-exact with fxsim on 8 samples (``verify``)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from lnm_deploy import ir  # noqa: E402
from lnm_deploy.calibrate import calibrate_network, load_recipe  # noqa: E402
from lnm_deploy.errors import UserInputError  # noqa: E402
from lnm_deploy.execute import run_float  # noqa: E402
from lnm_deploy.fxsim import run_fx  # noqa: E402
from lnm_deploy.metrics import accuracy  # noqa: E402
from lnm_deploy.model import model_to_ir, rate_encode, train_digits_cnn  # noqa: E402
from lnm_deploy.targets import load_target  # noqa: E402

STEPS, CALIB = 8, 32
EPOCHS = {"vgg": 10, "resnet": 3}
NEURON_LAYERS = {"vgg": ["lnm1", "maxpool1", "lnm2", "maxpool2", "lnm3"],
                 "resnet": ["stem_lnm", "b1_lnm1", "b1_out", "b2_lnm1", "b2_out", "out"]}
FOLDED = {"vgg": {"conv1": ["bn1"], "conv2": ["bn2"], "fc1": ["bn3"]},
          "resnet": {"stem": ["stem_bn"], "b2_proj": ["b2_proj_bn"], "fc": ["fc_bn"]}}


@pytest.fixture(scope="module", params=["vgg", "resnet"])
def trained(request: pytest.FixtureRequest) -> dict[str, Any]:
    arch = request.param
    rng_before = torch.random.get_rng_state()
    res = train_digits_cnn(arch, steps=STEPS, epochs=EPOCHS[arch], seed=0, progress=False)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global RNG is untouched
    g = model_to_ir(res.model, (1, 8, 8))
    x_te = res.x_test.astype(np.uint8)
    x_cal = rate_encode(res.data.x_train[:CALIB], STEPS, seed=0).reshape(-1, STEPS, 1, 8, 8).astype(np.uint8)
    cal = calibrate_network(g, x_cal, load_target("loihi2"), load_recipe("default"), y=res.data.y_train[:CALIB],
                            progress=False)
    return {"arch": arch, "res": res, "graph": g, "x_test": x_te, "y_test": res.data.y_test, "artifact": cal.artifact}


def test_rejects_an_unknown_architecture() -> None:
    with pytest.raises(UserInputError, match="arch must be one of"):
        train_digits_cnn(arch="lenet", progress=False)


@pytest.mark.slow
def test_trained_cnn_exports_folded_and_keeps_its_accuracy_in_fixed_point(trained: dict[str, Any]) -> None:
    res, g, x, y = trained["res"], trained["graph"], trained["x_test"], trained["y_test"]
    assert x.shape == (len(y), STEPS, 1, 8, 8) and set(np.unique(x)) <= {0, 1}
    assert res.test_accuracy >= 0.8  # chance is 0.1
    assert res.history.accuracy[-1] > res.history.accuracy[0]
    # BatchNorm folded into the convolutions / the Linear, max pooling as sum pooling into an OR layer
    assert not any("bn" in name for name in g.nodes)
    assert {n: g.nodes[n].metadata["folded"] for n in FOLDED[trained["arch"]]} == FOLDED[trained["arch"]]
    if trained["arch"] == "vgg":
        assert isinstance(g.nodes["maxpool1_sum"], ir.SumPool2d)
    else:  # identity skip into b1_out, projected skip into b2_out
        assert {s for s, d in g.edges if d == "b1_out"} == {"b1_conv2", "stem_lnm"}
        assert {s for s, d in g.edges if d == "b2_out"} == {"b2_conv2", "b2_proj"}
    float_acc = accuracy(run_float(g, x).output, y)
    assert abs(float_acc - res.test_accuracy) <= 0.02  # the float64 IR against the float32 torch model
    fixed_acc = accuracy(run_fx(trained["artifact"].fx, x).output, y)
    assert float_acc >= 0.8
    assert abs(float_acc - fixed_acc) <= 0.03


@pytest.mark.slow
@pytest.mark.lava
@pytest.mark.skipif(sys.version_info[:2] != (3, 10), reason="lava-nc 0.10 installs on Python 3.10 only")
def test_trained_cnn_verifies_lava_bit_exact(trained: dict[str, Any]) -> None:
    from lnm_deploy.verify import verify

    x, y = trained["x_test"], trained["y_test"]
    v = verify(trained["artifact"], x, y, backends=("lava",), backend_samples=8, float_graph=trained["graph"],
               max_accuracy_drop=0.03, progress=False)
    lava = v.backends["lava"]
    assert lava.samples == 8 and lava.bit_exact and lava.mismatched_spikes == 0 and lava.compared_spikes > 0
    assert v.passed, v.reasons
    # per-layer float-vs-fixed spike agreement is reported for every neuron layer
    assert [c.name for c in v.layers] == NEURON_LAYERS[trained["arch"]]
    # measured: vgg 0.984-0.999, resnet 0.928-0.998 (the deeper residual layers drift more)
    assert all(c.spike_agreement > 0.9 for c in v.layers), [(c.name, c.spike_agreement) for c in v.layers]
