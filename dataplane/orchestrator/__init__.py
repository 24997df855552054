"""The run loop: admit, build context, plan, act, validate, checkpoint."""
