"""Calibration recipes: the shipped files, validation errors that name the file and the key, and
applying a recipe to collected statistics."""

import json
from pathlib import Path

import numpy as np
import pytest

import lnm_deploy
from lnm_deploy.calibrate import (
    CALIBRATORS,
    ChannelClips,
    ClipRange,
    available_recipes,
    choose_ranges,
    collect_with_recipe,
    list_recipes,
    load_recipe,
    recipe_from_dict,
    shipped_recipes_dir,
)
from lnm_deploy.errors import UserInputError
from lnm_deploy.ir import Affine, Neuron, sequential

SHIPPED = ["agreement", "default", "entropy", "minmax", "mse", "percentile"]


def test_shipped_recipes_load():
    assert shipped_recipes_dir() == Path(lnm_deploy.__file__).resolve().parents[1] / "calibration"
    assert sorted(available_recipes()) == SHIPPED
    recipes = {r.name: r for r in list_recipes()}
    assert sorted(recipes) == SHIPPED
    for r in recipes.values():
        assert r.path is not None and r.path.stem == r.name
        assert r.info.description
        for cls in ("weights", "currents", "membrane"):
            tr = r.for_class(cls)
            assert tr.method in CALIBRATORS
            assert set(tr.params) == set(CALIBRATORS[tr.method].params)
        # Shipped files spell out every [recipe] key, so a reader sees every setting.
        text = r.path.read_text()
        for key in ("max_samples", "batch_size", "seed", "shuffle", "bins_per_side",
                    "trace_percentile", "margin"):
            assert f"\n{key} =" in text, (r.name, key)
    d = recipes["default"]
    assert d.weights.method == "minmax" and d.for_class("membrane").method == "minmax"
    assert d.info.margin == 1.25 and not d.search.enabled
    a = recipes["agreement"]
    assert a.search.enabled and a.search.objective == "spike_agreement" and 1.0 in a.search.scale_factors
    assert recipes["percentile"].weights.params == {"percentile": 99.999}
    # A path works as well as a name.
    assert load_recipe(str(d.path)).to_dict() == d.to_dict()


def test_recipe_round_trips_through_a_record():
    r = load_recipe("agreement")
    d = json.loads(json.dumps(r.to_dict()))
    back = recipe_from_dict(d)
    assert back.to_dict() == r.to_dict()
    # A record written before [currents], [membrane] and search.tensors went still reads back.
    old = dict(d, currents={"method": "percentile", "percentile": 99.99}, membrane={"method": "minmax"},
               search=dict(d["search"], tensors=["weights"]))
    assert recipe_from_dict(old).to_dict() == r.to_dict()


def test_defaults_fill_a_minimal_user_recipe(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('[weights]\nmethod = "mse"\n')
    r = load_recipe(f)
    assert r.name == "mine" and r.weights.params == {"candidates": 400}
    assert r.for_class("currents").method == "minmax" and r.info.batch_size == 32


BAD = [
    ('[weights]\nmethod = "mse"\npercentile = 99.0\n', r"unknown key\(s\) \['weights.percentile'\] for method 'mse'"),
    ('[weights]\nmethod = "max"\n', r"key 'weights.method' has unknown method 'max'; valid methods: \['entropy', 'minmax', 'mse', 'percentile'\]"),
    ('[weights]\nmethod = "percentile"\npercentile = 0\n', r"key 'weights.percentile' = 0.0 must be in \(0, 100\]"),
    ('[weights]\nmethod = "percentile"\npercentile = 100.5\n', r"key 'weights.percentile' = 100.5 must be in \(0, 100\]"),
    ('[weights]\nmethod = "percentile"\npercentile = "high"\n', r"key 'weights.percentile' must be a number"),
    # Settings that never acted are refused with the key, the reason and the fix.
    ('[currents]\nmethod = "percentile"\n', r"section \[currents\] is no longer supported: state scales .*abs-max.*Delete it"),
    ('[membrane]\nmethod = "minmax"\n', r"section \[membrane\] is no longer supported: .*Delete it"),
    ('[search]\ntensors = ["weights"]\n', r"key 'search.tensors' is no longer supported: .*weight clips only.*Delete it"),
    ('[weights]\ngranularity = "per-row"\n', r"key 'weights.granularity' is 'per-row'"),
    ('[recipe]\nbatch_size = 0\n', r"key 'recipe.batch_size' = 0 must be >= 1"),
    ('[recipe]\nbatch_size = 2.5\n', r"key 'recipe.batch_size' must be an integer"),
    ('[recipe]\nshuffle = 1\n', r"key 'recipe.shuffle' must be true or false"),
    ('[recipe]\nmargin = 0.9\n', r"key 'recipe.margin' = 0.9 must be >= 1"),
    ('[recipe]\nbins_per_side = 1000\n', r"key 'recipe.bins_per_side' = 1000 must be a power of two"),
    ('[recipe]\nsamples = 10\n', r"unknown key\(s\) \['recipe.samples'\]"),
    ('[search]\nobjective = "accuracy"\n', r"key 'search.objective' is 'accuracy'; allowed: \['spike_agreement'\]"),
    ('[search]\nscale_factors = [1.0, -0.5]\n', r"key 'search.scale_factors'"),
    ('[search]\nscale_factors = []\n', r"key 'search.scale_factors' must be a non-empty list"),
    ('[weight]\nmethod = "mse"\n', r"unknown section\(s\) \['weight'\]"),
    ("weights = 3\n", r"\[weights\] must be a table"),
    ("[weights\n", r"not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_recipes_name_the_file_and_key(tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(UserInputError, match=message) as info:
        load_recipe(f)
    assert str(f) in str(info.value)


def test_unknown_names_and_missing_files(tmp_path):
    with pytest.raises(UserInputError, match=r"unknown recipe 'fast'; shipped recipes: \['agreement'"):
        load_recipe("fast")
    with pytest.raises(UserInputError, match="does not exist"):
        load_recipe(tmp_path / "nope.toml")


def _graph():
    rng = np.random.default_rng(0)
    return sequential(
        [("fc1", Affine(weight=rng.laplace(size=(8, 6)))),
         ("n1", Neuron(shape=(8,), poly=[0.0, 0.9], v_th=1.0, syn_decay=0.5)),
         ("fc2", Affine(weight=rng.normal(size=(3, 8)), bias=np.zeros(3))),
         ("n2", Neuron(shape=(3,), poly=[0.0, 0.9], v_th=1.0))],
        (6,),
    )


def test_recipe_drives_collection_and_ranges(tmp_path):
    g = _graph()
    x = (np.random.default_rng(1).random((20, 10, 6)) < 0.3).astype(float)
    f = tmp_path / "small.toml"
    f.write_text('[recipe]\nmax_samples = 12\nbatch_size = 5\nshuffle = false\nbins_per_side = 256\n'
                 '[weights]\nmethod = "percentile"\npercentile = 90.0\ngranularity = "per-channel"\n')
    r = load_recipe(f)
    stats = collect_with_recipe(g, x, r, progress=False)
    assert stats.samples == 12 and stats.batch_size == 5 and stats.seed is None
    assert stats.bins_per_side == 256
    assert stats.neurons["n1"].v.trace.samples == [5, 10, 12]
    ranges = choose_ranges(stats, r, weight_bits=8, state_bits=24, graph=g)
    assert list(ranges) == [f"{t.layer}.{t.tensor}" for t in stats.tensors()]
    w = ranges["fc1.weight"]
    assert isinstance(w, ChannelClips) and w.clips.shape == (8,) and w.bits == 8
    assert np.all(w.clips <= np.abs(g.nodes["fc1"].weight).max(axis=1))
    # Currents and membrane: the exact abs-max (min-max), as the quantizer's state scales use.
    v = ranges["n1.v_pre"]
    assert isinstance(v, ClipRange) and v.method == "minmax" and v.clip == stats.neurons["n1"].v_pre.abs_max
    b = ranges["fc2.bias"]
    assert isinstance(b, ClipRange) and b.method == "minmax" and b.clipped_fraction == 0.0
    cur = ranges["n1.c"]
    assert isinstance(cur, ClipRange) and cur.method == "minmax" and cur.bits == 24
    assert cur.clip == stats.neurons["n1"].c.abs_max and cur.clipped_fraction == 0.0
    json.dumps({k: v.to_dict() for k, v in ranges.items()}, allow_nan=False)
    # Without the graph, per-channel weights with a histogram method fall back to per-tensor.
    assert isinstance(choose_ranges(stats, r, weight_bits=8, state_bits=24)["fc1.weight"], ClipRange)
