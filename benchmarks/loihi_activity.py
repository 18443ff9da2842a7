"""Spike activity of a saved loihi-profile candidate (``benchmarks/loihi_topology.py --save-dir``) on
SST-2 dev: ASR per population over all simulated positions (pads included), spikes and synaptic
events per sentence (spikes x fan-out: k taps into the next layer's mix, f + 1 from mix, d from
hidden). Prints the result and writes it as JSON.

Example::

    python benchmarks/loihi_activity.py runs/loihi_topology/models/d256_f1024_l2_k5 \\
        --teacher runs/sst2/teacher --json docs/results/loihi_activity.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoTokenizer

from lava_spikingbert.contract.atomic import atomic_write_json
from lava_spikingbert.model.loihi import LoihiConfig, LoihiSpikingMixer
from training.batching import encode, length_bucketed_batches
from training.readers import load_glue
from training.tasks import get_task


def activity(model: LoihiSpikingMixer, dev, t_conv: int) -> dict:
    c = model.config
    spikes: dict[str, float] = {}
    tokens = positions = 0
    for b in length_bucketed_batches(dev, 64, shuffle=False):
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], mode="simulate", t_conv=t_conv)
        tokens += int(out.attention_mask.sum())
        positions += out.attention_mask.numel()
        for name, counts in out.activity.spike_counts.items():
            spikes[name] = spikes.get(name, 0.0) + float(counts.sum())
    n = len(dev)
    f, d, k = c.intermediate_size, c.hidden_size, c.kernel_size
    fan_out = {"embed": k, "mix": f + 1, "hidden": d, "out": k}
    last = f"layer{c.num_layers - 1}.out"  # read by the host: no synapses
    result = {"t_conv": t_conv, "asr_per_position": {}, "synaptic_events_per_sentence": 0.0}
    for name, s in spikes.items():
        width = f if name.endswith("hidden") else d
        result["asr_per_position"][name] = s / (positions * width * t_conv)
        result["synaptic_events_per_sentence"] += 0.0 if name == last else s * fan_out[name.split(".")[-1]] / n
    result["spikes_per_sentence"] = sum(spikes.values()) / n
    result["simulated_positions_per_sentence"] = positions / n
    result["valid_tokens_per_sentence"] = tokens / n
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a saved candidate directory (config.json + model.pt)")
    p.add_argument("--teacher", default="runs/sst2/teacher", help="directory with the tokenizer")
    p.add_argument("--t-conv", type=int, default=16)
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model_dir = Path(args.model)
    model = LoihiSpikingMixer(LoihiConfig.load(model_dir / "config.json"))
    model.load_state_dict(torch.load(model_dir / "model.pt", weights_only=True))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(args.teacher, trust_remote_code=False)
    dev = encode(load_glue(get_task("sst2"), "dev"), tokenizer, 64)
    result = activity(model, dev, args.t_conv)
    print(json.dumps(result, indent=1))
    if args.json:
        atomic_write_json(Path(args.json), result)


if __name__ == "__main__":
    main()
