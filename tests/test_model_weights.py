"""Seeded random weights (helix_jax/model/weights.py): small models draw on the host with numpy,
larger ones on the device with JAX; either way a stage holds exactly the whole model's layers,
in both layer loops, and the two draws have the same scales."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from helix_jax.model import weights as weights_module
from helix_jax.model.weights import random_stage_weights, total_params
from helix_jax.modelconfig import PRESETS

CFG = PRESETS["tiny"]  # 4 layers, width 64, GQA 4/2, untied LM head


def flat(weights) -> dict[str, np.ndarray]:
    """'.'-joined parameter path -> host array; an unrolled stage's layer index is global."""
    out = {}
    for key, variable in nnx.to_flat_state(weights.state):
        path = [str(p) for p in key]
        if path[0] == "layers" and path[1].isdigit():
            path[1] = str(weights.start_layer + int(path[1]))
        out[".".join(path)] = np.asarray(variable.get_value())
    return out


def layer_slices(weights) -> dict[tuple[int, str], np.ndarray]:
    """(global layer, parameter) -> that layer's tensor, whichever the layer loop."""
    out = {}
    for name, array in flat(weights).items():
        parts = name.split(".")
        if parts[0] != "layers":
            continue
        if parts[1].isdigit():
            out[int(parts[1]), ".".join(parts[2:])] = array
        else:
            for i, layer in enumerate(range(weights.start_layer, weights.end_layer)):
                out[layer, ".".join(parts[1:])] = array[i]
    return out


@pytest.fixture(params=["host", "device"])
def draw(request, monkeypatch):
    """random_stage_weights as small models (host) or large ones (device) draw them."""
    if request.param == "device":
        monkeypatch.setattr(weights_module, "HOST_DRAW_MAX_PARAMS", 0)
    assert (total_params(CFG) <= weights_module.HOST_DRAW_MAX_PARAMS) == (request.param == "host")
    return request.param


def test_a_stage_holds_exactly_the_whole_models_layers(draw) -> None:
    whole = random_stage_weights(CFG, 0, 4, seed=3, layer_loop="unroll")
    whole_layers = layer_slices(whole)
    for start, end, loop in [(0, 2, "unroll"), (1, 4, "scan"), (2, 3, "unroll")]:
        stage = random_stage_weights(CFG, start, end, seed=3, layer_loop=loop)
        got = layer_slices(stage)
        assert {layer for layer, _ in got} == set(range(start, end))
        for key, array in got.items():
            np.testing.assert_array_equal(array, whole_layers[key], err_msg=str(key))
        outer = {k: v for k, v in flat(stage).items() if not k.startswith("layers")}
        assert ("embed.embedding" in outer) == (start == 0) and ("lm_head.kernel" in outer) == (end == 4)
        for name, array in outer.items():
            np.testing.assert_array_equal(array, flat(whole)[name], err_msg=name)
    other = layer_slices(random_stage_weights(CFG, 0, 4, seed=4, layer_loop="unroll"))
    assert not np.array_equal(other[0, "mlp.down_proj.kernel"], whole_layers[0, "mlp.down_proj.kernel"])


def test_host_and_device_draws_have_the_same_scales(monkeypatch) -> None:
    host = flat(random_stage_weights(CFG, 0, 4, seed=0, layer_loop="unroll"))
    monkeypatch.setattr(weights_module, "HOST_DRAW_MAX_PARAMS", 0)  # per-layer shapes: the device draws of the test above
    device = flat(random_stage_weights(CFG, 0, 4, seed=0, layer_loop="unroll"))
    assert host.keys() == device.keys()
    for name in host:
        a, b = host[name], device[name]
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if name.endswith("norm.weight"):  # RMSNorm weights start at one
            assert np.all(a == 1) and np.all(b == 1), name
            continue
        assert not np.array_equal(a, b), name  # two different draws ...
        assert abs(float(a.mean())) < 0.1 * float(a.std()), name
        assert 0.9 < float(a.std()) / float(b.std()) < 1.1, (name, a.std(), b.std())  # ... of one distribution


def test_a_negative_seed_draws_too() -> None:
    a = flat(random_stage_weights(CFG, 0, 1, seed=-1))
    b = flat(random_stage_weights(CFG, 0, 1, seed=1))
    assert not np.array_equal(a["embed.embedding"], b["embed.embedding"])


def test_every_stage_of_one_model_draws_the_same_way(monkeypatch) -> None:
    """The host/device choice is the whole model's: with the limit at two layers (under the
    model, above a middle stage of one layer, however a stage were measured), that stage still
    draws on the device, as the whole model does."""
    monkeypatch.setattr(weights_module, "HOST_DRAW_MAX_PARAMS", 2 * CFG.params_per_layer)
    whole = layer_slices(random_stage_weights(CFG, 0, 4, seed=5, layer_loop="unroll"))
    stage = layer_slices(random_stage_weights(CFG, 2, 3, seed=5, layer_loop="unroll"))
    for key, array in stage.items():
        np.testing.assert_array_equal(array, whole[key], err_msg=str(key))
