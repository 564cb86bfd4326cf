"""Triton kernels of mmit-fast, installed as ``mmit_fast.kernels``.

Imported lazily, only for CUDA tensors or under ``TRITON_INTERPRET=1`` (which must be
set before these modules are imported: Triton reads it when a kernel is decorated).
"""
