"""The spiking BERT student in PyTorch: configuration, neurons, the encoder (the single source of
truth for the equations), equilibrium gradients, weight quantizers, checkpoints and batch-parallel
inference. Imports the contract and nothing else of the project.

Import the modules directly (``from lava_spikingbert.model.encoder import SpikingBert``): this
``__init__`` stays empty so that the torch-free ``config`` can be imported without torch.
"""
