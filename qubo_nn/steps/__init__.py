"""One step policy (accept on the true loss, retry with more damping, best sample, seeds) and the
pipelined sweep that schedules the hybrid's block steps around it."""
