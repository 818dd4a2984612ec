"""Segmentation networks: configuration, building, ONNX export and the ONNX predictor.

Import the submodules directly (``models.config``, ``models.builder``,
``models.onnx_export``, ``models.predictor``). This file re-exports nothing, so that
importing ``models.predictor`` from the service stays free of torch.
"""
