"""Triton kernels of fastep (installed as fastep.kernels). Only @triton.jit kernels and their launchers live here."""
