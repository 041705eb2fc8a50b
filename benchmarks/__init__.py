"""Benchmarks and measuring helpers, outside the product packages.

The folder ``benchmarks/`` installs as ``eva_transfer_bench``. It holds what only measurements and tests need:
timing and peak-memory measurement, matmul-rate probes, reference pairs (this toolkit against Detectron2 / timm)
and synthetic detection results for evaluator benchmarks. The scripts in ``tools/benchmark_*.py`` are thin command
lines over these modules, and tests import the modules. Nothing in ``eva_transfer`` or ``eva_transfer_projects``
imports from here (tests/test_code_structure.py enforces it).
"""
