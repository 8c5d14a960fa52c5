"""Segmentation: model adapters, prediction cache and post-processing."""
