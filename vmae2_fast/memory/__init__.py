"""The memory of a training run per GPU, planned before it starts.

`trace.py` runs one training step of the engine's own model on fake tensors and records every
storage it allocates and frees; `plan.py` adds the persistent state (parameters, gradients,
AdamW, the parallelism's buffers) and answers what a run needs at a batch size, the largest
batch that fits a device under each checkpointing policy, and the least recompute that fits.
`python -m vmae2_fast.plan` prints it (`report.py`)."""
from .plan import (HEADROOM, REPORTED_POLICIES, MemoryPlan, Setup, least_recompute, max_batch,
                   plan_memory, recompute_ladder)
from .trace import StepSpec

__all__ = ["Setup", "StepSpec", "MemoryPlan", "plan_memory", "max_batch", "least_recompute",
           "recompute_ladder", "HEADROOM", "REPORTED_POLICIES"]
