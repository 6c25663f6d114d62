"""Building blocks shared by the networks of the zoo (exact conv rewrites: :mod:`fastep.nn.aligned`)."""
