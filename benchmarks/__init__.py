"""Overhead and load benchmarks, side by side with the libraries users wire by hand.

Run ``make bench`` (or ``python -m benchmarks.run``); ``--quick`` for a short run.
"""
