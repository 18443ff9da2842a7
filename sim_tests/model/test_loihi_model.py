"""Fast tests of the loihi-profile model (lava_spikingbert.model.loihi)."""

from __future__ import annotations

import pytest
import torch

from lava_spikingbert.model.quantizers import make_quantizer
from lava_spikingbert.model.loihi import LoihiConfig, LoihiConfigError, LoihiSpikingMixer


def tiny(**overrides) -> LoihiSpikingMixer:
    torch.manual_seed(0)
    base = dict(vocab_size=50, embed_size=16, hidden_size=12, intermediate_size=20, num_layers=3, kernel_size=3,
                max_length=24, max_position_embeddings=32, fit_size=16, dropout=0.0)
    base.update(overrides)
    return LoihiSpikingMixer(LoihiConfig(**base))


def batch(lengths, L=None, vocab=50, seed=1):
    g = torch.Generator().manual_seed(seed)
    L = L or max(lengths)
    ids = torch.randint(1, vocab, (len(lengths), L), generator=g)
    mask = (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


def test_config_validation():
    with pytest.raises(LoihiConfigError, match="kernel_size"):
        LoihiConfig(kernel_size=4)
    with pytest.raises(LoihiConfigError, match="mixing"):
        LoihiConfig(mixing="attention")
    with pytest.raises(LoihiConfigError, match="hidden_size"):
        LoihiConfig(hidden_size=0)
    assert LoihiConfig(kernel_size=4, mixing="causal").half_window == 3


def test_shapes_and_taps():
    model = tiny().eval()
    ids, mask = batch([5, 9, 3])
    out = model(ids, mask, t_conv=4)
    c = model.config
    assert out.logits.shape == (3, c.num_labels)
    assert set(out.activity.asr) == set(c.population_names())
    L = out.attention_mask.shape[1]
    assert L == 9 + (c.num_layers - 1) * c.half_window
    assert out.activity.asr["layer1.hidden"].shape == (3, L, c.intermediate_size)
    assert [h.shape[-1] for h in out.hidden] == [c.hidden_size] * (c.num_layers + 1)
    assert [p.shape[-1] for p in out.projected] == [c.fit_size] * (c.num_layers + 1)
    counts = out.activity.spike_counts["layer2.out"]
    assert torch.equal(counts, counts.round()) and float(counts.max()) <= 4


@pytest.mark.parametrize("mixing", ["bidirectional", "causal"])
def test_padding_invariance(mixing):
    """A valid token's spike counts equal those of the full fixed-length graph, whatever the padding."""
    model = tiny(mixing=mixing).eval()
    c = model.config
    ids, mask = batch([6, 2, 11])
    short = model(ids, mask, t_conv=16)
    wide_ids, wide_mask = torch.nn.functional.pad(ids, (0, c.max_length - ids.shape[1])), \
        torch.nn.functional.pad(mask, (0, c.max_length - ids.shape[1]))
    # the full graph: every one of max_length positions simulated (bypassing the cropping)
    cur = model.input_current(wide_ids, wide_mask, torch.zeros_like(wide_ids))
    full = model.simulate(cur, 16)
    for row, n in enumerate([6, 2, 11]):
        for name in c.population_names():
            assert torch.equal(short.activity.spike_counts[name][row, :n], full.spike_counts[name][row, :n]), name
    # and each sentence alone gives the same logits as in the batch
    for row, n in enumerate([6, 2, 11]):
        alone = model(ids[row:row + 1, :n], mask[row:row + 1, :n], t_conv=16)
        torch.testing.assert_close(alone.logits, short.logits[row:row + 1])


def test_spiking_rate_matches_rate_map_for_constant_current():
    """The embed population sees a constant current: its ASR is the neuron's exact rate within 1/T."""
    model = tiny(rate_forward="staircase").eval()
    ids, mask = batch([7, 4])
    T = 512
    out = model(ids, mask, t_conv=T)
    with torch.no_grad():
        rate = model(ids, mask, mode="rate")
    err = (out.activity.asr["embed"] - rate.activity.asr["embed"]).abs().max()
    assert float(err) <= 1.0 / T + 1e-6


def test_spiking_asr_converges_and_follows_rate_ann():
    """At large T the spiking ASRs settle (T vs 2T agree closely), and the first layer's ASRs stay
    close to the rate ANN's. (Deeper populations receive spike trains, whose reset-to-zero rate is
    below the constant-current map: equilibrium training corrects for that.)"""
    model = tiny().eval()
    ids, mask = batch([8, 5])
    first = model(ids, mask, t_conv=1024)
    a = first.activity.asr
    b = model(ids, mask, t_conv=2048).activity.asr
    with torch.no_grad():
        r = model(ids, mask, mode="rate").activity.asr
    valid = first.attention_mask.bool()[:, :, None]
    for name in model.config.population_names():
        assert float(((a[name] - b[name]).abs() * valid).max()) < 0.02, name
    assert float(((a["layer0.mix"] - r["layer0.mix"]).abs() * valid).sum() / (valid.sum() * 12)) < 0.1


def test_equilibrium_gradients_flow_without_bptt_graph():
    model = tiny().train()
    ids, mask = batch([6, 9])
    model.zero_grad()
    out = model(ids, mask, mode="equilibrium", t_conv=8)
    # forward values are exactly the simulated ASRs (spike counts / T)
    for name, counts in out.activity.spike_counts.items():
        assert torch.equal(out.activity.asr[name].detach(), counts / 8)
    (out.logits.sum() + sum(p.pow(2).mean() for p in out.projected)).backward()
    for name, p in model.named_parameters():
        if name.startswith(("layers.", "input_map", "classifier", "fit")):
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert float(model.layers[0].fc1.weight.grad.abs().sum()) > 0
    # the autograd graph is one pass of the steady-state map: it does not grow with T
    def graph_size(T):
        out = model(ids, mask, mode="equilibrium", t_conv=T)
        seen, stack = set(), [out.logits.grad_fn]
        while stack:
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            stack.extend(f for f, _ in fn.next_functions)
        return len(seen)
    assert graph_size(4) == graph_size(32)


def test_simulation_chunking_does_not_change_spikes():
    model = tiny().eval()
    ids, mask = batch([6, 9])
    ids, mask, types = model.fit_inputs(ids, mask, None)
    cur = model.input_current(ids, mask, types)
    a = model.simulate(cur, 12, chunk_steps=1).spike_counts
    b = model.simulate(cur, 12, chunk_steps=5).spike_counts
    for k in a:
        assert torch.equal(a[k], b[k])


def test_calibration_folds_into_weights():
    model = tiny().eval()
    ids, mask = batch([10, 12, 7])
    model.calibrate_(ids, mask, mean=0.25, std=1.0)
    ids2, mask2, types = model.fit_inputs(ids, mask, None)
    cur = model.input_current(ids2, mask2, types)
    valid = mask2.bool()
    torch.testing.assert_close(cur[valid].mean(0), torch.full((12,), 0.25), atol=1e-4, rtol=0)
    torch.testing.assert_close(cur[valid].std(0), torch.ones(12), atol=1e-4, rtol=0)


def test_int8_weights_are_loihi_grid():
    model = tiny().eval()
    model.set_weights("int8")
    q = make_quantizer("int8", model.config.vth)
    w = model.layers[0].fc1.weight
    iw = q.integer(w)
    assert int(iw.mantissa.abs().max()) <= 256
    ids, mask = batch([5, 3])
    out = model(ids, mask, t_conv=4)
    assert out.logits.shape == (2, 2)
