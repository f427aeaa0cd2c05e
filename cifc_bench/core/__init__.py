"""The core layer: the run's configuration and its one home of defaults, the component registry, protocols and
their data, seeds, precision, and atomic result and state I/O. It imports no other layer."""
