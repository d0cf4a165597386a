"""One router per resource: models, predict, the Open Inference Protocol v2, ops."""
