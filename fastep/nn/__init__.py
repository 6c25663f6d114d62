"""Building blocks shared by the networks of the zoo: :mod:`fastep.nn.layers` (equalized-LR
conv/linear, instance/pixel norm, minibatch stddev, MAC counting) and the exact conv rewrites
of :mod:`fastep.nn.aligned`."""
