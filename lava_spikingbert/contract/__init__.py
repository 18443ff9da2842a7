"""The contract between the PyTorch side and the Lava side: the model file and the facts both share.

Imports nothing of the project outside this package, and no torch or Lava (numpy, h5py, stdlib):

* ``constants``  -- population and synapse names, neuron kinds, weight modes, the attention mask
  value and the Loihi 2 fixed-point limits;
* ``depths``     -- each population's depth in the pipelined Lava graph (recorded in the file);
* ``model_file`` -- the HDF5 model file: its schema, writer and validating reader;
* ``atomic``     -- atomic file and directory writes (checkpoints, model files, reports).
"""
