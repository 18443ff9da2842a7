"""SpikingBERT on Intel Lava (lava-nc): processes, graph builder and runner.

Nothing in this package imports torch (the parent package ``lava_spikingbert`` does, to re-export
the torch model). Layout:

* ``params``   -- :class:`LavaModelParams`, the plain-numpy parameter bundle the graph is built from
  (from a torch model via :func:`params.params_from_model`, later from the HDF5 model file);
* ``kernels``  -- numpy float32 kernels of the synapses and current blocks (linear, attention,
  LayerNorm, GELU, delay lines), called by the ProcessModels;
* ``counts``   -- per-window spike counting and packing of the counts into few float64 words;
* ``depths``   -- depth of every population and the delay lines that align paths of different depth;
* ``procs/``   -- Lava Processes and ProcessModels only (Lava's compiler executes every module in
  that folder when it looks for models, so nothing else lives there);
* ``builder``  -- builds the pipelined network for a batch of windows;
* ``packing``  -- packs several sentences side by side into one window;
* ``runner``   -- runs it (``Loihi2SimCfg``), always cleans up, reads counts, computes logits;
  ``run_dataset`` for many sentences;
* ``bench``    -- simulator speed benchmark on random parameters.

Import the submodules directly (``from lava_spikingbert.lava.runner import run_batch``); this
``__init__`` stays empty so that importing a Process does not pull in the builder.
"""
