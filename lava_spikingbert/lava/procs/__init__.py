"""Lava Processes and ProcessModels of the spiking BERT graph.

Only Process/ProcessModel modules (and ``_bases``, their shared base classes) live here: Lava's
compiler imports every module of this package (and executes every ``.py`` file in this folder)
when it searches models for a Process, so a module here must only define, never run anything.
"""
