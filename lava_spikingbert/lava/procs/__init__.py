"""Lava Processes and ProcessModels of the spiking BERT graph.

Only Process/ProcessModel modules live here: Lava's compiler imports every module of this package
(and executes every ``.py`` file in this folder) when it searches models for a Process.
"""
