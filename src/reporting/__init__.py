"""Helpers of :mod:`src.report`: sweep loading, paper tables, figures."""
