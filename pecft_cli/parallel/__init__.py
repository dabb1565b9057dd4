"""Several processes as one: the process group, relaunching, sharding and stop signals."""
