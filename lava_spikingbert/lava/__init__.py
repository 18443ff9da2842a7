"""The Lava runtime: runs a model file on Intel Lava (lava-nc). Imports the contract, Lava and
numpy; never torch (``sim_tests/lava/test_lava_fixed.py`` runs ``spikingbert lava`` with torch
unimportable).

* ``params``   -- :class:`LavaModelParams`, the plain-numpy parameter bundle the graph is built
  from (``params_from_file``: a model file's float weights);
* ``fixed``    -- the fixed_pt graph's integer parameters from a quantized model file;
* ``kernels``  -- numpy float32 kernels of the synapses and current blocks (linear, attention,
  LayerNorm, GELU, delay lines), called by the ProcessModels;
* ``counts``   -- per-window spike counting and packing of the counts into few float64 words;
* ``procs/``   -- Lava Processes and ProcessModels only (Lava's compiler executes every module in
  that folder when it looks for models, so nothing else lives there);
* ``builder``  -- builds the pipelined network for a batch of windows;
* ``packing``  -- packs several sentences side by side into one window;
* ``runner``   -- runs it (``Loihi2SimCfg``), always cleans up, reads counts, computes logits;
* ``schedule`` -- tokenizes with the file's tokenizer and plans the runs of many sentences.

Import the submodules directly (``from lava_spikingbert.lava.runner import run_batch``); this
``__init__`` stays empty so that importing a Process does not pull in the builder.
"""
