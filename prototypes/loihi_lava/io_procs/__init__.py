"""Host-side boundary Processes (input and readout) of the stock-only Loihi graph.

This package holds only Process and ProcessModel modules: Lava's compiler executes every
module in the directory of a Process's module when it looks for ProcessModels.
"""
