"""Whole networks as the layer path sees them: BatchNorm folding and the list of weight layers."""
