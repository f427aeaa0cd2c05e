"""The run layer: resolving a run from its one configuration, the continual loop, the run folder (lock, resume,
the method after task j), the evaluation worker, sweeps, generation from learned states, rescoring and the work
plan behind --dry-run and the ETA. It imports every layer below it, never reporting."""
