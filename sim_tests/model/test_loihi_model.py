"""Fast tests of the loihi-profile model (lava_spikingbert.model.loihi)."""

from __future__ import annotations

import pytest
import torch

from lava_spikingbert.model.quantizers import make_quantizer
from lava_spikingbert.model.config import ConfigError
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


@pytest.mark.parametrize("mixing", ["bidirectional", "causal"])
def test_dilated_mixing_reads_spaced_taps(mixing):
    """Tap j of a layer with dilation D reads position l + D * (j - centre), zero beyond the ends;
    the config refuses dilations that are not one positive integer per layer."""
    model = tiny(num_layers=2, kernel_size=3, mixing=mixing, dilations=[1, 4])
    layer = model.layers[1]
    d, L = model.config.hidden_size, 17
    with torch.no_grad():
        layer.mix_bias.zero_()
        layer.mix_weight.copy_(torch.tensor([1.0, 10.0, 100.0]).expand(d, 1, 3))
        x = torch.zeros(1, L, d)
        x[0, 7] = 1.0  # one active position
        y = layer.mix_current(x)[0, :, 0]
    centre = 2 if mixing == "causal" else 1
    want = torch.zeros(L)
    for j, w in enumerate([1.0, 10.0, 100.0]):
        want[7 - 4 * (j - centre)] = w  # out[l] gets tap j where l + 4 * (j - centre) = 7
    torch.testing.assert_close(y, want)
    for bad in ([1], [1, 0], [1, 2.5], "1,2"):
        with pytest.raises(LoihiConfigError, match="dilations"):
            LoihiConfig(num_layers=2, dilations=bad)


def test_shapes_and_taps():
    model = tiny().eval()
    ids, mask = batch([5, 9, 3])
    out = model(ids, mask, t_conv=4)
    c = model.config
    assert out.logits.shape == (3, c.num_labels)
    assert set(out.activity.asr) == set(c.population_names())
    L = out.attention_mask.shape[1]
    assert L == 9 + 2 * c.margin
    assert out.activity.asr["layer1.hidden"].shape == (3, L, c.intermediate_size)
    assert [h.shape[-1] for h in out.hidden] == [c.hidden_size] * (c.num_layers + 1)
    assert [p.shape[-1] for p in out.projected] == [c.fit_size] * (c.num_layers + 1)
    counts = out.activity.spike_counts["layer2.out"]
    assert torch.equal(counts, counts.round()) and float(counts.max()) <= 4


@pytest.mark.parametrize("readout", ["mean", "max", "mean_max"])
def test_readout_pools_only_valid_tokens(readout):
    """The host readout pools the last population's rates over a sentence's valid tokens: what the
    padding (and the margins) hold never changes a sentence's logits."""
    model = tiny(readout=readout).eval()
    c = model.config
    assert model.classifier.in_features == (2 if readout == "mean_max" else 1) * c.hidden_size
    rates = torch.rand(2, 7, c.hidden_size)
    mask = torch.tensor([[0, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1, 0]])
    noisy = rates.clone()
    noisy[0, 4:] = 1.0
    noisy[:, 0] = 1.0
    assert torch.equal(model.readout(rates, mask), model.readout(noisy, mask))
    valid = rates[0, 1:4]
    pooled = {"mean": valid.mean(0), "max": valid.amax(0), "mean_max": torch.cat([valid.mean(0), valid.amax(0)])}
    assert torch.allclose(model.readout(rates, mask)[0], model.classifier(pooled[readout]))
    with pytest.raises(LoihiConfigError, match="readout"):
        LoihiConfig(readout="attention")


def test_new_students_pool_mean_and_max_checkpoints_without_the_field_the_mean():
    assert LoihiConfig().readout == "mean_max"
    saved_before = {k: v for k, v in LoihiConfig().to_dict().items() if k != "readout"}
    assert LoihiConfig.from_dict(saved_before).readout == "mean"


def pack_row(model, ids, mask, lengths, gap):
    """Simulate the sentences in one row, ``gap`` zero-input positions before, between and after
    them; returns the spike counts and each sentence's first position."""
    c = model.config
    types = torch.zeros_like(ids)
    pieces, starts, pos = [torch.zeros(gap, c.hidden_size)], [], gap
    for row, n in enumerate(lengths):
        cur = model.input_current(ids[row:row + 1, :n], mask[row:row + 1, :n], types[row:row + 1, :n])[0]
        pieces += [cur, torch.zeros(gap, c.hidden_size)]
        starts.append(pos)
        pos += n + gap
    return model.simulate(torch.cat(pieces)[None], 16).spike_counts, starts


@pytest.mark.parametrize("mixing,dilations", [("bidirectional", None), ("causal", None), ("bidirectional", [1, 3, 2]),
                                              ("causal", [2, 1, 1])])
def test_margins_make_packed_rows_exact(mixing, dilations):
    """The margin convention: sentences simulated one per row (R zero-input positions before the
    first token, R after the longest) give, at every valid position of every population, the spike
    counts of the same sentences packed into one long row with R zero-input positions between them
    and at both ends; and a sentence alone gives the counts and logits it gets in a padded batch."""
    model = tiny(mixing=mixing, dilations=dilations).eval()
    c = model.config
    lengths = [6, 2, 11]
    ids, mask = batch(lengths)
    model.calibrate_(ids, mask)  # non-zero biases: zero-input positions are then not silent
    left, right = c.margins
    R = c.margin
    assert R == (sum(dilations) if dilations else c.num_layers) * (
        (c.kernel_size - 1) if mixing == "causal" else (c.kernel_size - 1) // 2)
    assert (left, right) == ((R, 0) if mixing == "causal" else (R, R))
    out = model(ids, mask, t_conv=16)
    assert out.attention_mask.shape[1] == left + max(lengths) + right
    # one long row, built by hand: [R zeros] s0 [R zeros] s1 [R zeros] s2 [R zeros]
    packed, starts = pack_row(model, ids, mask, lengths, gap=R)
    spikes_in_margins = 0
    for name in c.population_names():
        counts = out.activity.spike_counts[name]
        for row, n in enumerate(lengths):
            assert torch.equal(counts[row, left:left + n], packed[name][0, starts[row]:starts[row] + n]), (name, row)
        spikes_in_margins += int(counts[:, :left].sum())
    assert spikes_in_margins > 0  # the margins are simulated neurons, not padding that could be dropped
    # control: sentences packed without gaps do influence each other (the comparison above can fail)
    touching, starts = pack_row(model, ids, mask, lengths, gap=0)
    assert any(not torch.equal(out.activity.spike_counts[name][row, left:left + n],
                               touching[name][0, starts[row]:starts[row] + n])
               for name in c.population_names() for row, n in enumerate(lengths))
    # a sentence alone = the same sentence in the padded batch
    for row, n in enumerate(lengths):
        alone = model(ids[row:row + 1, :n], mask[row:row + 1, :n], t_conv=16)
        torch.testing.assert_close(alone.logits, out.logits[row:row + 1])
        for name in c.population_names():
            assert torch.equal(alone.activity.spike_counts[name][0, left:left + n],
                               out.activity.spike_counts[name][row, left:left + n]), (name, row)
    # the KD taps are the token positions (token j of the input at index j)
    assert out.token_mask.shape == (3, max(lengths)) and torch.equal(out.token_mask, mask)
    assert torch.equal(out.hidden[0], out.activity.asr["embed"][:, left:left + max(lengths)])


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
    cur, _ = model.margined_current(ids, mask, None)
    a = model.simulate(cur, 12, chunk_steps=1).spike_counts
    b = model.simulate(cur, 12, chunk_steps=5).spike_counts
    for k in a:
        assert torch.equal(a[k], b[k])


def test_calibration_folds_into_weights():
    model = tiny().eval()
    ids, mask = batch([10, 12, 7])
    model.calibrate_(ids, mask, mean=0.25, std=1.0)
    cur, mask2 = model.margined_current(ids, mask, None)
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


# ------------------------------------------------------------------------------ checkpoints and profiles
def test_checkpoint_records_profile_and_load_student_dispatches(tmp_path):
    import json

    from conftest import tiny_model
    from lava_spikingbert.contract.model_file import PROFILES
    from lava_spikingbert.model.checkpoint import read_profile, save_model
    from lava_spikingbert.model.encoder import SpikingBert
    from lava_spikingbert.model.student import STUDENT_CLASSES, load_student

    assert set(STUDENT_CLASSES) == set(PROFILES)
    model = tiny().eval()
    model.set_weights("int8")
    save_model(model, tmp_path / "loihi")
    assert json.loads((tmp_path / "loihi" / "config.json").read_text())["profile"] == "loihi"
    assert read_profile(tmp_path / "loihi") == "loihi"
    loaded = load_student(tmp_path / "loihi")
    assert isinstance(loaded, LoihiSpikingMixer) and not loaded.training and loaded.config.weights == "int8"
    ids, mask = batch([5, 8])
    assert torch.equal(loaded(ids, mask, t_conv=8).logits, model(ids, mask, t_conv=8).logits)
    assert load_student(tmp_path / "loihi", t_conv=4).config.t_conv == 4
    save_model(tiny_model(), tmp_path / "paper")
    assert "profile" not in json.loads((tmp_path / "paper" / "config.json").read_text())
    assert read_profile(tmp_path / "paper") == "paper"
    assert isinstance(load_student(tmp_path / "paper"), SpikingBert)
    # each profile's rate ANN: its model accepts the mode, and the loihi one is the steady-state map chained
    from lava_spikingbert.model.student import RATE_ANN_MODES, rate_ann_mode

    assert set(RATE_ANN_MODES) == set(PROFILES)
    paper = load_student(tmp_path / "paper")
    paper(ids, mask, mode=rate_ann_mode(paper))
    rate_logits = loaded(ids, mask, mode=rate_ann_mode(loaded)).logits
    current, valid = loaded.margined_current(ids, mask, None)
    last = loaded.steady_state(current).asr[f"layer{loaded.config.num_layers - 1}.out"]
    assert torch.allclose(rate_logits, loaded.readout(last, valid))
    # a checkpoint of one profile is refused where the other is needed, naming the file
    with pytest.raises(ConfigError, match=r"loihi/config.json: a 'loihi'-profile checkpoint"):
        SpikingBert.from_pretrained(tmp_path / "loihi")
    with pytest.raises(ConfigError, match=r"paper/config.json: a 'paper'-profile checkpoint"):
        LoihiSpikingMixer.from_pretrained(tmp_path / "paper")
    # an unknown profile: one line naming the file
    cfg = json.loads((tmp_path / "loihi" / "config.json").read_text())
    (tmp_path / "loihi" / "config.json").write_text(json.dumps({**cfg, "profile": "truenorth"}))
    with pytest.raises(ConfigError, match=r"loihi/config.json: unknown model profile 'truenorth'"):
        load_student(tmp_path / "loihi")


@pytest.mark.parametrize("readout,weights", [("mean", "fp32"), ("mean_max", "int8")])
def test_logits_at_several_T_equal_separate_simulations(readout, weights):
    """One simulation of the longest T read at every shorter T gives exactly the logits of a
    simulation of that many steps."""
    model = tiny(readout=readout, weights=weights).eval()
    ids, mask = batch([6, 9, 4])
    steps = (2, 7, 12)
    at = model.predict_logits_at(ids, mask, None, steps)
    for T in steps:
        assert torch.equal(at[T], model.predict_logits(ids, mask, t_conv=T)), T
        assert torch.equal(at[T], model(ids, mask, mode="simulate", t_conv=T).logits), T
    assert not torch.equal(at[2], at[12])
