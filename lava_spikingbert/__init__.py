"""lava-spikingbert: SpikingBERT in PyTorch, quantized and mapped onto Intel Lava / Loihi 2.

Layers, bottom to top; a module imports only from its own layer and the ones below it
(``sim_tests/test_architecture.py`` checks this; docs/architecture.md explains it):

* ``lava_spikingbert.contract`` -- the model file and the shared constants (numpy + h5py only);
* ``lava_spikingbert.model``    -- the torch student (imports the contract);
* ``lava_spikingbert.lava``     -- the Lava runtime: runs a model file (imports the contract; no torch);
* ``training``                  -- data, teacher, distillation, the pipeline (model + contract);
* ``hw_export``                 -- quantization, the exporter, the fixed-point reference, reports;
* ``lava_spikingbert.cli``, ``lava_spikingbert.lava_eval``, ``lava_spikingbert.parity`` -- the top:
  the command line and the Lava-vs-torch comparisons, the only modules that import every layer.
"""

__version__ = "0.1.0"
