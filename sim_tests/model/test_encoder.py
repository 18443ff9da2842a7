"""The spiking core: neuron convergence, steady-state map, equilibrium gradients, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from lava_spikingbert.contract.constants import population_names
from lava_spikingbert.model.config import ConfigError, SpikingBertConfig
from lava_spikingbert.model.encoder import Activity, SpikingBert
from lava_spikingbert.model.equilibrium import straight_through
from lava_spikingbert.model.neurons import IFSignedPair, IFSubtract, LIFResetZero
from conftest import TINY, tiny_batch, tiny_model


def run_population(neuron, current: torch.Tensor, T: int) -> torch.Tensor:
    v = torch.zeros_like(current)
    count = torch.zeros_like(current)
    for _ in range(T):
        v, s = neuron.step(v, current)
        count += s
    return count / T


# ---------------------------------------------------------------- neurons
@pytest.mark.parametrize("T", [8, 16, 32, 64, 100])
@pytest.mark.parametrize("vth", [1.0, 0.7])
def test_if_asr_within_one_over_T_of_steady_state(T, vth):
    current = torch.linspace(-0.5, 1.5, 2001, dtype=torch.float64) * vth
    neuron = IFSubtract(vth)
    asr = run_population(neuron, current, T)
    err = (asr - torch.clamp(current / vth, 0, 1)).abs()
    assert float(err.max()) <= 1.0 / T + 1e-12
    assert torch.equal(neuron.rate(current), torch.clamp(current / vth, 0, 1))


@pytest.mark.parametrize("T", [16, 64])
def test_lif_reset_zero_rates(T):
    vth = 1.0
    current = torch.linspace(-0.5, 3.0, 701, dtype=torch.float64)
    neuron = LIFResetZero(vth)
    asr = run_population(neuron, current, T)
    exact = neuron.rate_exact(current)
    assert float((asr - exact).abs().max()) <= 1.0 / T + 1e-12
    # Lava's reset-to-zero LIF (measured in Lava): I=1, vth=3 fires every 4th step (0.25, not 1/3)
    three = LIFResetZero(3.0)
    assert float(three.rate_exact(torch.tensor(1.0))) == 0.25
    assert float(run_population(three, torch.tensor([1.0]), 64)) == 0.25
    # the smooth rate it trains through is exact at mid-steps and saturates at 2*vth
    smooth = neuron.rate(current)
    assert float(smooth[current <= 0].abs().max()) == 0.0
    assert float(neuron.rate(torch.tensor(2.0))) == pytest.approx(1.0)
    assert float(neuron.rate(torch.tensor(2 / 3))) == pytest.approx(0.5)
    assert float((smooth - exact).abs().max()) <= 0.5


@pytest.mark.parametrize("kind", [IFSubtract, LIFResetZero])
@pytest.mark.parametrize("vth", [1.0, 0.7])
def test_in_place_chunk_loop_equals_step(kind, vth):
    """The simulator's in-place loop (``run_steps``) is bit-identical to stepping one by one."""
    g = torch.Generator().manual_seed(3)
    currents = torch.randn(12, 5, 7, generator=g) * vth + 0.3
    neuron = kind(vth)
    v_ref, spikes = torch.rand(5, 7, generator=g), []
    v = v_ref.clone()
    for t in range(currents.shape[0]):
        v_ref, s = neuron.step(v_ref, currents[t])
        spikes.append(s)
    out = neuron.run_steps(v, currents.clone(), torch.empty_like(currents))
    assert torch.equal(out, torch.stack(spikes)) and torch.equal(v, v_ref)
    assert 0 < float(out.mean()) < 1
    owned = currents.clone()  # spikes may overwrite the currents they come from
    assert torch.equal(neuron.run_steps(v_ref.clone(), owned, owned), neuron.run_steps(
        v_ref.clone(), currents.clone(), torch.empty_like(currents)))


@pytest.mark.parametrize("vth", [1.0, 0.7])
def test_signed_pair_is_an_on_and_an_off_if_neuron(vth):
    """``if_signed_pair``: its spikes are exactly those of two independent if_subtract neurons fed
    +I and -I (on minus off), the two never fire in the same step, the ASR is within 1/T of
    clamp(I / vth, -1, 1), and the in-place loop equals stepping."""
    T = 32
    g = torch.Generator().manual_seed(4)
    currents = (torch.rand(T, 6, 9, generator=g, dtype=torch.float64) * 3 - 1.5) * vth
    currents[:, 0] = torch.linspace(-1.5, 1.5, 9, dtype=torch.float64) * vth  # constant rows
    pair, single = IFSignedPair(vth), IFSubtract(vth)
    v = pair.initial_state(currents[0])
    v_on, v_off = torch.zeros(6, 9, dtype=torch.float64), torch.zeros(6, 9, dtype=torch.float64)
    spikes, on, off = [], [], []
    assert v.shape == (2, 6, 9)
    for t in range(T):
        v, s = pair.step(v, currents[t])
        v_on, s_on = single.step(v_on, currents[t])
        v_off, s_off = single.step(v_off, -currents[t])
        spikes.append(s), on.append(s_on), off.append(s_off)
    spikes, on, off = torch.stack(spikes), torch.stack(on), torch.stack(off)
    assert torch.equal(spikes, on - off)
    assert float((on * off).sum()) == 0.0  # never both in one step
    assert float(on.sum()) > 0 and float(off.sum()) > 0
    assert torch.equal(v, torch.stack((v_on, v_off)))
    steady = spikes[:, 0].mean(0)
    assert float((steady - torch.clamp(currents[0, 0] / vth, -1, 1)).abs().max()) <= 1.0 / T + 1e-12
    assert torch.equal(pair.rate(currents), torch.clamp(currents / vth, -1, 1))
    v2 = pair.initial_state(currents[0])
    owned = currents.clone()  # the spikes may overwrite the currents they come from
    assert torch.equal(pair.run_steps(v2, owned, owned), spikes) and torch.equal(v2, v)


def test_signed_pair_network(batch):
    """A signed student: negative and positive ASRs, spike events = on + off spikes (>= |net|),
    simulation independent of chunking, and an equilibrium training step with gradients."""
    model = tiny_model(neuron="if_signed_pair").double()
    ids, mask = batch
    emb = model.embedding_current(ids, torch.zeros_like(ids))
    valid = mask.bool()
    with torch.no_grad():
        whole = model.simulate(emb, mask, 16)
        stepwise = model.simulate(emb, mask, 16, chunk_steps=1)
        trains = model.simulate(emb, mask, 16, chunk_steps=3, record_trains=True)
    for name in whole.asr:
        assert torch.equal(whole.spike_counts[name], stepwise.spike_counts[name]), name
        assert torch.equal(whole.spike_events[name], trains.trains[name].abs().sum(0)), name
        assert bool((whole.spike_events[name] >= whole.spike_counts[name].abs()).all()), name
    out = whole.asr["layer1.output"][valid]
    assert float(out.min()) < -0.1 and float(out.max()) > 0.1  # both halves are carried
    model.train()
    loss = model(ids, mask, labels=torch.tensor([0, 1, 0])).loss
    loss.backward()
    assert float(model.layers[0].key.weight.grad.abs().sum()) > 0


def test_network_residual_falls_with_T(model, batch):
    ids, mask = batch
    emb = model.embedding_current(ids, torch.zeros_like(ids))
    valid = mask.bool()
    errors = []
    with torch.no_grad():
        for T in (8, 16, 32, 64):
            sim = model.simulate(emb, mask, T)
            ss = model.steady_state(emb, mask, equilibrium=sim, join=False)
            per_pop = [float((sim.asr[k] - ss.asr[k]).abs()[valid].mean()) for k in sim.asr]
            errors.append(sum(per_pop) / len(per_pop))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.6 * errors[0]
    # the network is really active (a silent network converges trivially)
    assert 0.1 < float(sim.asr["layer1.output"][valid].mean()) < 0.9


def test_simulation_independent_of_chunking(batch):
    model = tiny_model().double()
    ids, mask = batch
    emb = model.embedding_current(ids, torch.zeros_like(ids))
    with torch.no_grad():
        whole = model.simulate(emb, mask, 16)
        stepwise = model.simulate(emb, mask, 16, chunk_steps=1)
        chunked = model.simulate(emb, mask, 16, chunk_steps=5)
    for name in whole.asr:
        assert torch.equal(whole.spike_counts[name], stepwise.spike_counts[name]), name
        assert torch.equal(whole.spike_counts[name], chunked.spike_counts[name]), name
    for a, b in zip(whole.attention_scores, stepwise.attention_scores):
        torch.testing.assert_close(a, b)


def test_cls_only_inference_matches_full_simulation(model, batch):
    ids, mask = batch
    full = model(ids, mask).logits
    fast = model.predict_logits(ids, mask)
    assert torch.equal(full, fast)


# ---------------------------------------------------------------- gradients
def test_gradcheck_steady_state_map():
    model = tiny_model(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, intermediate_size=12).double()
    ids, mask = tiny_batch(batch=2, length=5)
    emb = model.embedding_current(ids, torch.zeros_like(ids)).detach().requires_grad_()
    w = model.layers[0].value.weight

    def via_embedding(e):
        act = model.steady_state(e, mask)
        return torch.cat([act.asr[k].flatten() for k in act.asr] + [s.flatten() for s in act.attention_scores])

    # gradcheck w.r.t. the embedding current (all populations, all taps) ...
    assert torch.autograd.gradcheck(via_embedding, (emb,), eps=1e-6, atol=1e-5)

    # ... and w.r.t. a synaptic weight matrix (swapped in as a plain tensor)
    weight = w.detach().clone().requires_grad_()

    def via_weight(wt):
        saved = model.layers[0].value.weight
        try:
            del model.layers[0].value.weight
            model.layers[0].value.weight = wt
            act = model.steady_state(emb.detach(), mask)
        finally:
            model.layers[0].value.weight = saved
        return torch.cat([act.asr[k].flatten() for k in act.asr])

    assert torch.autograd.gradcheck(via_weight, (weight,), eps=1e-6, atol=1e-5)


def _loss(act: Activity, name="layer1.output") -> torch.Tensor:
    return (act.asr[name][:, 0] ** 2).sum() + act.asr["layer0.attn_out"].sum() + act.attention_scores[0].mean()


def test_join_passes_snn_values_and_steady_state_gradients(batch):
    model = tiny_model().double()
    ids, mask = batch
    def emb():  # a fresh graph per use (the embedding LayerNorm is among the checked parameters)
        return model.embedding_current(ids, torch.zeros_like(ids))

    with torch.no_grad():
        sim = model.simulate(emb(), mask, 16)
    taps = model.steady_state(emb(), mask, equilibrium=sim)
    for name in population_names(2):  # values: exactly the simulated ASRs
        assert torch.equal(taps.asr[name], sim.asr[name]), name
    for a, b in zip(taps.attention_scores, sim.attention_scores):
        assert torch.equal(a, b)
    params = [model.layers[0].key.weight, model.layers[1].intermediate.bias, model.embeddings.LayerNorm.weight]
    grads = torch.autograd.grad(_loss(taps), params)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)

    # gradients are those of the steady-state map: with the ANN steady state as the "equilibrium"
    # the joined graph must reproduce the map's own gradients exactly
    with torch.no_grad():
        ann = model.steady_state(emb(), mask)
    fake = Activity(asr={k: v.detach() for k, v in ann.asr.items()},
                    attention_scores=[s.detach() for s in ann.attention_scores], t_conv=16)
    joined = torch.autograd.grad(_loss(model.steady_state(emb(), mask, equilibrium=fake)), params)
    direct = torch.autograd.grad(_loss(model.steady_state(emb(), mask)), params)
    for a, b in zip(joined, direct):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_ann_grad_point_uses_the_reference_chain(batch):
    model = tiny_model(grad_point="ann").double()
    ids, mask = batch
    emb = model.embedding_current(ids, torch.zeros_like(ids))
    with torch.no_grad():
        sim = model.simulate(emb, mask, 16)
    taps = model.steady_state(emb, mask, equilibrium=sim)
    assert torch.equal(taps.asr["layer1.output"], sim.asr["layer1.output"])
    # "ann": the gradient of each tap is the clamped-ANN chain's, whatever the simulated values
    w = model.layers[0].key.weight
    g_joined = torch.autograd.grad(taps.asr["layer1.output"].sum(), w)[0]
    g_ann = torch.autograd.grad(model.steady_state(emb, mask).asr["layer1.output"].sum(), w)[0]
    torch.testing.assert_close(g_joined, g_ann, rtol=0, atol=1e-12)


def test_training_step_uses_equilibrium_and_bptt_baseline_differs(batch):
    model = tiny_model()
    model.train()
    ids, mask = batch
    labels = torch.tensor([0, 1, 1])
    out = model(ids, mask, labels=labels)  # training default: equilibrium mode
    out.loss.backward()
    g_eq = model.layers[0].key.weight.grad.clone()
    assert torch.isfinite(g_eq).all() and g_eq.abs().sum() > 0
    model.zero_grad()
    out_bptt = model(ids, mask, labels=labels, mode="bptt")
    out_bptt.loss.backward()
    g_bptt = model.layers[0].key.weight.grad
    assert torch.isfinite(g_bptt).all() and g_bptt.abs().sum() > 0
    # same forward values (same spikes, no dropout), different gradient estimators
    torch.testing.assert_close(out.logits, out_bptt.logits)
    assert not torch.allclose(g_eq, g_bptt)


def test_feedback_implicit_gradient_matches_unrolled_fixed_point():
    model = tiny_model(feedback=True).double()
    with torch.no_grad():
        model.feedback.weight.normal_(0, 0.01, generator=torch.Generator().manual_seed(3))
    ids, mask = tiny_batch(batch=2, length=6)
    emb = model.embedding_current(ids, torch.zeros_like(ids)).detach()
    w = model.layers[0].value.weight
    reference = model.fixed_point(emb, mask, max_iter=500, tol=1e-14)  # autograd through the iterations
    g_ref = torch.autograd.grad(_loss(reference), w)[0]
    with torch.no_grad():
        fp = model.fixed_point(emb, mask, max_iter=500, tol=1e-14)
    sim = Activity(asr={k: v.detach() for k, v in fp.asr.items()},
                   attention_scores=[s.detach() for s in fp.attention_scores], t_conv=16)
    taps = model.equilibrium_taps(emb, mask, sim)
    g_ift = torch.autograd.grad(_loss(taps), w)[0]
    assert model.last_adjoint_stats["steps"] >= 1
    torch.testing.assert_close(g_ift, g_ref, rtol=1e-7, atol=1e-9)
    # without the adjoint solve (feedback ignored in backward) the gradient is measurably wrong
    taps0 = model.steady_state(emb, mask, equilibrium=sim, feedback_input=sim.asr["layer1.output"])
    g_naive = torch.autograd.grad(_loss(taps0), w)[0]
    assert float((g_naive - g_ref).abs().max()) > 1e-4 * float(g_ref.abs().max())


def test_feedback_simulation_runs_stepwise(batch):
    model = tiny_model(feedback=True)
    ids, mask = batch
    out = model(ids, mask)
    assert out.logits.shape == (3, 2)
    assert torch.isfinite(out.logits).all()


def test_straight_through_is_exact():
    value = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float32)
    sur = torch.tensor([0.7, 0.11, 0.5], requires_grad=True)
    out = straight_through(value, sur)
    assert torch.equal(out, value)
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(sur.grad, torch.tensor([1.0, 2.0, 3.0]))


# ---------------------------------------------------------------- invariances
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_padding_invariance(dtype):
    model = tiny_model().to(dtype)
    ids, mask = tiny_batch(batch=3, length=10)
    n = int(mask[2].sum())
    alone = model(ids[2:3, :n], mask[2:3, :n]).activity
    padded = model(ids, mask).activity
    for name in ("embed", "layer0.context", "layer1.output"):
        assert torch.equal(alone.asr[name][0, 0], padded.asr[name][2, 0]), name
    torch.testing.assert_close(model.predict_logits(ids[2:3, :n], mask[2:3, :n])[0], model.predict_logits(ids, mask)[2])


@pytest.mark.parametrize("layers", [1, 3])
def test_any_depth(layers):
    model = tiny_model(num_hidden_layers=layers)
    ids, mask = tiny_batch()
    out = model(ids, mask)
    assert len(out.hidden_asr) == layers + 1
    assert len(out.attention_scores) == layers
    assert set(out.activity.asr) == set(population_names(layers))


def test_determinism_under_seed(batch):
    ids, mask = batch
    a, b = tiny_model(seed=5), tiny_model(seed=5)
    assert torch.equal(a(ids, mask).logits, b(ids, mask).logits)
    for m in (a, b):
        m.train()
        m.config.hidden_dropout_prob = 0.1
        m.embeddings.dropout_p = 0.1
    torch.manual_seed(11)
    la = a(ids, mask, labels=torch.tensor([0, 1, 0])).loss
    torch.manual_seed(11)
    lb = b(ids, mask, labels=torch.tensor([0, 1, 0])).loss
    assert torch.equal(la, lb)


def test_save_and_load_round_trip(tmp_path, batch):
    model = tiny_model(fit_size=20)
    model.config.extra["task"] = "sst2"
    path = model.save_pretrained(tmp_path / "student")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = SpikingBert.from_pretrained(path)
    assert loaded.config == model.config
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    ids, mask = batch
    assert torch.equal(model(ids, mask).logits, loaded(ids, mask).logits)
    # run-time override of the simulation length
    assert SpikingBert.from_pretrained(path, t_conv=4).config.t_conv == 4
    # saving again over an existing checkpoint replaces it whole
    model.save_pretrained(path)
    assert SpikingBert.from_pretrained(path).config == model.config


# ---------------------------------------------------------------- errors
def test_bad_config_errors():
    with pytest.raises(ConfigError, match="hidden_size.*num_attention_heads"):
        SpikingBertConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ConfigError, match="neuron"):
        SpikingBertConfig(neuron="izhikevich")
    with pytest.raises(ConfigError, match="t_conv"):
        SpikingBertConfig(t_conv=0)
    with pytest.raises(ConfigError, match="max_length"):
        SpikingBertConfig(max_length=1024, max_position_embeddings=512)
    with pytest.raises(ConfigError, match="vth"):
        SpikingBertConfig(vth=0.0)


def test_bad_checkpoint_errors(tmp_path):
    with pytest.raises(ConfigError, match="not a checkpoint directory"):
        SpikingBert.from_pretrained(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json.*not valid JSON"):
        SpikingBert.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "hidden_sizes": 3}))
    with pytest.raises(ConfigError, match="unknown config field.*hidden_sizes"):
        SpikingBert.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(ConfigError, match="model.safetensors: missing"):
        SpikingBert.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="unreadable safetensors"):
        SpikingBert.from_pretrained(tmp_path)


def test_input_errors(model):
    too_long = torch.ones(1, TINY["max_length"] + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="exceeds the model's max_length"):
        model(too_long)
    with pytest.raises(ValueError, match="input_ids must lie in"):
        model(torch.tensor([[1, 2, TINY["vocab_size"]]]))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.ones(2, 4, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="mode must be one of"):
        model(torch.ones(1, 4, dtype=torch.long), mode="magic")


def test_atomic_directory_replaces_carries_and_recovers(tmp_path):
    from lava_spikingbert.contract.atomic import atomic_directory, recover_directory

    d = tmp_path / "ckpt"

    def write(files: dict, carry=()):
        with atomic_directory(d, carry=carry) as tmp:
            for name, text in files.items():
                (tmp / name).write_text(text)

    write({"model": "1", "state": "s1"})
    write({"model": "2"}, carry=("state",))  # the state moves over into the new directory
    assert sorted(p.name for p in d.iterdir()) == ["model", "state"] and (d / "state").read_text() == "s1"
    with pytest.raises(RuntimeError):  # a failing write keeps the previous directory
        with atomic_directory(d) as tmp:
            (tmp / "model").write_text("half")
            raise RuntimeError
    assert (d / "model").read_text() == "2" and not list(tmp_path.glob(".ckpt.*"))
    # a crash between the two renames: the complete new copy is finished, carrying the state
    tmp, old = tmp_path / ".ckpt.tmp", tmp_path / ".ckpt.old"
    d.rename(old)
    tmp.mkdir()
    (tmp / "model").write_text("3")
    recover_directory(d, carry=("state",))
    assert (d / "model").read_text() == "3" and (d / "state").read_text() == "s1" and not old.exists()
    # only the old copy (the crash came before the new one was complete): roll back
    d.rename(old)
    recover_directory(d)
    assert (d / "model").read_text() == "3"
    # unfinished writes beside a complete directory (also earlier versions' random names) are dropped
    tmp.mkdir()
    (tmp_path / ".ckpt.abc_1234.tmp").mkdir()
    (tmp_path / ".ckpt.int8.tmp").mkdir()  # the write in progress of a sibling named ckpt.int8: kept
    recover_directory(d)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ckpt.int8.tmp", "ckpt"]


@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_logits_at_several_T_equal_separate_simulations(weights, batch):
    """One simulation of the longest T read at every shorter T gives exactly the logits of a
    simulation of that many steps (the network starts at rest; its input is constant)."""
    model = tiny_model(weights=weights)
    ids, mask = batch
    steps = (3, 8, 5, 16)
    at = model.predict_logits_at(ids, mask, None, steps)
    assert list(at) == sorted(steps)
    for T in steps:
        assert torch.equal(at[T], model.predict_logits(ids, mask, t_conv=T)), T
    assert not torch.equal(at[3], at[16])  # the readout really changes with T
    with pytest.raises(ValueError, match="steps"):
        model.predict_logits_at(ids, mask, None, (0, 4))
    emb = model.embedding_current(ids, torch.zeros_like(ids))
    with pytest.raises(ValueError, match="counts_at"), torch.no_grad():
        model.simulate(emb, mask, 8, counts_at=(9,))
