"""SST-2 dev length distribution (word pieces) and the windows needed to run it at T=16,
one sentence per window vs packed along the token axis (``packing.pack``).

The mixer is translation-equivariant (depthwise conv + token-wise layers; positions, if any,
are added to the input current on the host), so the Lava row length need not equal the
training length: only the per-sentence margins (receptive field) must match training.

Usage: ``python -m prototypes.loihi_lava.sst2_packing [--json OUT]`` (loads the teacher's
tokenizer; needs ``PYTHONPATH`` to include the repository root).
"""
import argparse
import csv
import json

import numpy as np

from .packing import pack

DEV_TSV = '/work/shared/data/glue/SST-2/dev.tsv'
T = 16
# receptive field (left, right) per token-mixer layout: centred k over N blocks reaches
# N * (k - 1) / 2 each way; causal k reaches N * (k - 1) to the left only
REACHES = {'centred k3 N2': (2, 2), 'centred k3 N4 / k5 N2': (4, 4),
           'centred k5 N4': (8, 8), 'causal k3 N4': (8, 0)}


def dev_lengths(path: str = DEV_TSV) -> np.ndarray:
    """Word-piece counts of the dev sentences, [CLS] and [SEP] included."""
    from transformers import AutoTokenizer
    from training.teacher import default_teacher_path
    tok = AutoTokenizer.from_pretrained(default_teacher_path())
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter='\t', quoting=csv.QUOTE_NONE))
    return np.array([len(tok(r['sentence'])['input_ids']) for r in rows])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--json')
    args = parser.parse_args()
    n = dev_lengths()
    stats = {'sentences': int(len(n)), 'min': int(n.min()), 'max': int(n.max()),
             'mean': round(float(n.mean()), 2),
             'percentiles': {p: int(np.percentile(n, p)) for p in (50, 75, 90, 95, 99)},
             'over_32': int((n > 32).sum()), 'over_64': int((n > 64).sum())}
    print('lengths incl. [CLS]/[SEP]:', stats)
    table = []
    for name, reach in REACHES.items():
        for tokens in (32, 64, 128, 256):
            for per_row in (1, None):
                if per_row is None and tokens == 32 and max(reach) >= 8:
                    continue
                try:
                    placements, rows, truncated = pack(n, tokens, reach, per_row)
                except ValueError:
                    continue
                used = int(sum(min(n[i], tokens - reach[0] - reach[1]) for i, _, _ in placements))
                r = {'reach': name, 'tokens': tokens, 'packed': per_row is None, 'rows': rows,
                     'truncated': int(truncated), 'steps_T16': rows * T,
                     'token_steps_T16': rows * T * tokens,
                     'utilisation': round(used / (rows * tokens), 3)}
                table.append(r)
                print(f"{name:22} L={tokens:3} {'packed' if r['packed'] else 'single':6} "
                      f"rows={rows:4} truncated={truncated:3} steps={r['steps_T16']:6} "
                      f"token-steps={r['token_steps_T16']:8} util={r['utilisation']}")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'lengths': stats, 'histogram': np.bincount(n).tolist(),
                       'packing': table}, f, indent=1)


if __name__ == '__main__':
    main()
