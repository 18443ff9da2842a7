"""Weight quantizers: Loihi grids, straight-through gradients, model hooks, checkpoints, QAT, PTQ."""

from __future__ import annotations

import json

import pytest
import torch

from lava_spikingbert.model.encoder import SpikingBert
from lava_spikingbert.model.quantizers import (SPIKING_SYNAPSES, BinaryQuantizer, Int8Quantizer, TernaryQuantizer,
                                         attach_weight_quantizers, ceil_log2, make_quantizer, snap_scale)
from conftest import tiny_batch, tiny_model
from training_fixtures import glue_dir, new_student, setup, tiny_teacher_dir  # noqa: F401  (fixtures)

MODES = ("int8", "ternary", "binary")


def _w(seed: int = 0, shape=(24, 40), scale: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale


def _on_grid(q: torch.Tensor, iw) -> None:
    m = iw.mantissa.to(torch.float64)
    assert torch.equal(q.to(torch.float64), m * (2.0 ** iw.exponent) * iw.vth)  # exact, no rounding
    assert torch.equal(q, iw.dequantize(q.dtype))


# ------------------------------------------------------------------------------- grids
@pytest.mark.parametrize("vth", [1.0, 0.5, 2.0])
def test_int8_mixed_grid_even_and_in_range(vth):
    w = _w()
    q = Int8Quantizer(vth)
    iw = q.integer(w)
    m = iw.mantissa
    assert iw.sign_mode == "mixed"
    assert int(m.min()) >= -256 and int(m.max()) <= 254 and torch.all(m % 2 == 0)
    # the exponent is the smallest that fits: one step smaller would overflow the mantissa range
    assert float(w.max()) / vth <= 254 * 2.0 ** iw.exponent and float(-w.min()) / vth <= 256 * 2.0 ** iw.exponent
    assert float(w.abs().max()) / vth > 127 * 2.0 ** iw.exponent
    qw = q.quantize(w)
    _on_grid(qw, iw)
    assert float((qw - w).abs().max()) <= 2.0 ** iw.exponent * vth + 1e-7  # half a step of 2 LSBs


def test_int8_single_sign_uses_unsigned_8_bit():
    w = _w().abs()
    iw = Int8Quantizer(1.0).integer(w)
    assert iw.sign_mode == "excitatory"
    assert int(iw.mantissa.min()) >= 0 and int(iw.mantissa.max()) <= 255
    assert torch.any(iw.mantissa % 2 == 1)  # odd mantissas are valid without the sign bit
    iw = Int8Quantizer(1.0).integer(-w)
    assert iw.sign_mode == "inhibitory" and int(iw.mantissa.min()) >= -255 and int(iw.mantissa.max()) <= 0
    zero = Int8Quantizer(1.0).integer(torch.zeros(3, 4))
    assert torch.count_nonzero(zero.mantissa) == 0


def test_ternary_is_absmean_with_a_loihi_scale():
    w = _w(1)
    q = TernaryQuantizer(1.0)
    iw = q.integer(w)
    qw = q.quantize(w)
    alpha = float(w.abs().mean())
    a = iw.alpha
    assert set(qw.unique().tolist()) <= {-a, 0.0, a}
    assert abs(a - alpha) <= alpha / 128  # snapped to 7 significant bits
    codes = torch.clamp(torch.round(w / (alpha + 1e-8)), -1, 1)
    assert torch.equal(qw, codes * a)
    ma = int(iw.mantissa.abs().max())
    assert ma % 2 == 0 and 128 <= ma <= 254
    _on_grid(qw, iw)


def test_binary_is_centred_sign():
    w = _w(2) + 0.05  # a non-zero mean
    q = BinaryQuantizer(1.0)
    qw = q.quantize(w)
    iw = q.integer(w)
    a = iw.alpha
    assert set(qw.unique().tolist()) == {-a, a}
    mu = w.mean()
    assert torch.equal(qw > 0, (w - mu) >= 0)
    assert abs(a - float((w - mu).abs().mean())) <= a / 128
    _on_grid(qw, iw)
    assert set(BinaryQuantizer(1.0).quantize(torch.zeros(2, 2)).unique().tolist()) == {0.0}


def test_helpers():
    assert ceil_log2(1.0) == 0 and ceil_log2(1.5) == 1 and ceil_log2(0.25) == -2 and ceil_log2(0.26) == -1
    for x in (1e-4, 0.0213, 0.75, 3.0):
        m, e = snap_scale(x)
        assert m % 2 == 0 and 128 <= m <= 254 and abs(m * 2.0 ** e - x) <= x / 128
    assert make_quantizer("fp32") is None
    with pytest.raises(ValueError, match="unknown weight mode"):
        make_quantizer("int4")


# ------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("mode", MODES)
def test_straight_through_gradient(mode):
    w = _w(3).requires_grad_(True)
    x = torch.randn(5, w.shape[1])
    q = make_quantizer(mode)
    qw = q(w)
    assert torch.equal(qw.detach(), q.quantize(w.detach()))  # forward value exactly Q(W)
    (qw @ x.T).square().sum().backward()
    ref = qw.detach().clone().requires_grad_(True)
    (ref @ x.T).square().sum().backward()
    assert torch.equal(w.grad, ref.grad)  # dQ/dW = identity


# ------------------------------------------------------------------------------- model hooks
def test_attach_sets_every_spiking_synapse_only():
    model = tiny_model()
    attach_weight_quantizers(model, "ternary")
    assert model.config.weights == "ternary"
    names = []
    for name, mod in model.named_modules():
        if hasattr(mod, "weight_quantizer"):
            names.append(name.rsplit(".", 1)[-1])
            assert isinstance(mod.weight_quantizer, TernaryQuantizer)
    assert set(names) == set(SPIKING_SYNAPSES) - {"feedback"}
    assert not hasattr(model.classifier, "weight_quantizer") or model.classifier.weight_quantizer is None
    attach_weight_quantizers(model, "fp32")
    assert all(m.weight_quantizer is None for _, m in model.synapses()) and model.config.weights == "fp32"
    fb = tiny_model(feedback=True, weights="binary")
    assert isinstance(fb.feedback.weight_quantizer, BinaryQuantizer)


@pytest.mark.parametrize("mode", MODES)
def test_quantized_model_simulates_its_quantized_weights(mode):
    """A model built with weights=mode (the SpikingBert.__init__ hook) equals an fp32 model whose
    weights are replaced by Q(W)."""
    qmodel = tiny_model(weights=mode)
    ref = tiny_model()
    with torch.no_grad():
        for (_, a), (_, b) in zip(qmodel.synapses(), ref.synapses()):
            assert torch.equal(a.weight, b.weight)  # same latent weights
            b.weight.copy_(a.synaptic_weight())
    ids, mask = tiny_batch()
    assert torch.equal(qmodel.predict_logits(ids, mask), ref.predict_logits(ids, mask))
    assert not torch.equal(qmodel.predict_logits(ids, mask), tiny_model().predict_logits(ids, mask))


@pytest.mark.parametrize("mode", MODES)
def test_integer_synapses_give_the_float_result(mode, monkeypatch):
    """Quantized synapses fed by spikes use int8 x int8 -> int32 products in the simulation; the
    spike counts equal those of the float product of Q(W), also after the weights change."""
    calls = []
    real = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append(tuple(a.shape)) or real(a, b))
    model = tiny_model(weights=mode)
    ids, mask = tiny_batch()

    def both():
        emb = model.embedding_current(ids, torch.zeros_like(ids))
        with torch.no_grad():
            before = len(calls)
            fast = model.simulate(emb, mask, 16)
            used = len(calls) - before
            slow = model.simulate(emb, mask, 16, integer_synapses=False)
        assert used > 0 and len(calls) == before + used  # the float run used no integer kernel
        for k in slow.spike_counts:
            assert torch.equal(fast.spike_counts[k], slow.spike_counts[k]), k
        return fast

    first = both()
    assert sum(float(c.sum()) for c in first.spike_counts.values()) > 0
    with torch.no_grad():  # an in-place update (as an optimizer step): the cached codes follow it
        for _, lin in model.synapses():
            lin.weight.mul_(-1.5)
    second = both()
    assert any(not torch.equal(first.spike_counts[k], second.spike_counts[k]) for k in first.spike_counts)
    assert not any(lin.binary_input for _, lin in model.synapses())
    n = len(calls)
    tiny_model().predict_logits(ids, mask)  # fp32 weights: float products
    with torch.enable_grad():  # the steady-state map (rates, autograd): float products
        model.steady_state(model.embedding_current(ids, torch.zeros_like(ids)), mask)
    assert len(calls) == n


@pytest.mark.parametrize("mode", MODES)
def test_simulation_follows_the_trainers_optimizer_steps(mode):
    """QAT: after a step of the trainer's optimizer (fused AdamW updates the latent weights in
    place without bumping their version counter) the no-grad simulation uses the new Q(W), the
    same as a fresh model holding the updated weights."""
    from training.common import make_optimizer

    model = tiny_model(weights=mode)
    ids, mask = tiny_batch()
    before = model.predict_logits(ids, mask)  # a simulation before the step
    optimizer = make_optimizer(model, lr=0.05, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    with torch.enable_grad():  # a random gradient on every quantized weight
        loss = sum((lin.synaptic_weight() * torch.randn(lin.weight.shape, generator=g)).sum()
                   for _, lin in model.synapses())
        loss.backward()
    optimizer.step()
    fresh = tiny_model(weights=mode)
    fresh.load_state_dict(model.state_dict())
    after = model.predict_logits(ids, mask)
    assert torch.equal(after, fresh.predict_logits(ids, mask))
    assert not torch.equal(after, before)


@pytest.mark.parametrize("mode", MODES)
def test_checkpoint_round_trip_keeps_quantizers(mode, tmp_path):
    model = tiny_model(weights=mode)
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["weights"] == mode
    loaded = SpikingBert.from_pretrained(tmp_path / "m")
    assert loaded.config.weights == mode
    assert all(m.weight_quantizer is not None and m.weight_quantizer.mode == mode for _, m in loaded.synapses())
    for (_, a), (_, b) in zip(model.synapses(), loaded.synapses()):
        assert torch.equal(a.weight, b.weight)  # latent fp32 weights are what is saved
    ids, mask = tiny_batch()
    assert torch.equal(model.predict_logits(ids, mask), loaded.predict_logits(ids, mask))


def test_post_training_quantization():
    from hw_export.quantize import quantize_model

    model = tiny_model()
    q = quantize_model(model, "int8")
    assert q is not model and model.config.weights == "fp32" and q.config.weights == "int8"
    assert all(m.weight_quantizer is None for _, m in model.synapses())
    t = quantize_model(tiny_model(weights="ternary"), "ternary")
    assert t.config.weights == "ternary"
    with pytest.raises(ValueError, match="trained with ternary"):
        quantize_model(t, "binary")


def test_steady_state_gradients_flow_to_latent_weights():
    model = tiny_model(weights="binary").train()
    ids, mask = tiny_batch()
    out = model(ids, mask, labels=torch.tensor([0, 1, 0]), mode="equilibrium")
    out.loss.backward()
    grads = [m.weight.grad for _, m in model.synapses()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


# ------------------------------------------------------------------------------- QAT through run_stage
def test_qat_stage_runs_with_ternary_weights(setup, tmp_path):
    from training.distill import StageSettings, run_stage

    teacher, tok, spec, train, dev = setup
    student = new_student(teacher)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    settings = StageSettings(stage="intermediate", max_steps=2, batch_size=8, lr=1e-3, t_conv=4,
                             checkpoint_every=10, weights="ternary")
    result = run_stage(settings, student, teacher, train, tmp_path / "qat", tokenizer=tok, progress=False)
    assert result.completed
    assert student.config.weights == "ternary"
    loaded = SpikingBert.from_pretrained(result.final_dir)
    assert loaded.config.weights == "ternary"
    assert all(isinstance(m.weight_quantizer, TernaryQuantizer) for _, m in loaded.synapses())
    changed = [k for k, v in loaded.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("key.weight") for k in changed), "latent synaptic weights were not trained"
    for _, m in loaded.synapses():  # simulated weights are ternary
        assert m.synaptic_weight().unique().numel() <= 3
