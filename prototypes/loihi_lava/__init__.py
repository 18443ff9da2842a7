"""Prototype of the Loihi-native profile's Lava side: a spiking mixer language model built
only from stock lava-nc processes, with a bit-accurate numpy reference, range and
stock-only checks, and benchmarks. See FINDINGS.md.
"""
