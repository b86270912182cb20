"""Tasks on whole networks built from the layer path (``network_quantize``)."""
